// tests/cuda_sim: a simulated launch's error (bad configuration, a barrier not every thread reaches) raises
// here, as a GPU's launch error would.
#pragma once
#include <c10/util/Exception.h>

#define C10_CUDA_KERNEL_LAUNCH_CHECK()                                                      \
  do {                                                                                      \
    const std::string pygpt_sim_error = ::cuda_sim::take_last_error();                      \
    TORCH_CHECK(pygpt_sim_error.empty(), "simulated CUDA launch failed: ", pygpt_sim_error); \
  } while (0)
