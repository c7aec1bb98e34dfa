/* The attention micro-kernels of attention_tiles.h, instantiated once per
 * instruction set (generic; AVX2/FMA and AVX-512 where LH_X86_DISPATCH):
 * included by the forward (attention.c) and the backward
 * (backward_attention.c), each getting its own static copies. */
#ifndef LH_KERNELS_CPU_ATTENTION_ISA_H
#define LH_KERNELS_CPU_ATTENTION_ISA_H

#define AT_NAME(x) x##_generic
#define AT_ATTR
#define AT_VL 4
#define AT_NV 4
#define AT_RB 2
#include "attention_tiles.h"
#undef AT_NAME
#undef AT_ATTR
#undef AT_VL
#undef AT_NV
#undef AT_RB

#if LH_X86_DISPATCH
#define AT_NAME(x) x##_avx2
#define AT_ATTR __attribute__((target("arch=x86-64-v3")))
#define AT_VL 8
#define AT_NV 2
#define AT_RB 4
#include "attention_tiles.h"
#undef AT_NAME
#undef AT_ATTR
#undef AT_VL
#undef AT_NV
#undef AT_RB

#define AT_NAME(x) x##_avx512
#define AT_ATTR __attribute__((target("arch=x86-64-v4")))
#define AT_VL 16
#define AT_NV 2
#define AT_RB 8  /* 16 accumulators of 32 registers */
#include "attention_tiles.h"
#undef AT_NAME
#undef AT_ATTR
#undef AT_VL
#undef AT_NV
#undef AT_RB
#endif

#endif
