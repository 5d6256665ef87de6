// The avx2 instance of the kernel table (compile flags: CMakeLists.txt).
#define GC_ISA_NS avx2
#define GC_ISA_NAME "avx2"
#define GC_VBYTES 32
#include "table-inl.h"
