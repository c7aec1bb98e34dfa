/* tests/cuda_emu: the CUDA header this name stands for, emulated on the cpu */
#include "../emu.h"
