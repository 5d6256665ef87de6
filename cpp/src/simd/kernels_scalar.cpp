// The scalar instance of the kernel table (compile flags: CMakeLists.txt).
#define GC_ISA_NS scalar
#define GC_ISA_NAME "scalar"
#include "table-inl.h"
