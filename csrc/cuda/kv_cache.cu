// KV cache, CUDA C++: being written.
