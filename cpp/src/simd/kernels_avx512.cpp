// The avx512 instance of the kernel table (compile flags: CMakeLists.txt).
#define GC_ISA_NS avx512
#define GC_ISA_NAME "avx512"
#define GC_VBYTES 64
#include "table-inl.h"
