// The scalar instance of the elementwise kernels (compile flags: CMakeLists.txt).
#define GC_ISA_NS scalar
#define GC_ISA_NAME "scalar"
#include "kernels-inl.h"
