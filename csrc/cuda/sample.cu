// sample, CUDA C++: being written (the sampling issue).
