/* A CUDA runtime whose "device" is host memory: the entry points unifer_tensorrt._cuda binds,
 * with their CUDA 13 signatures, so that the binding's allocations, copies, streams and error
 * handling run through ctypes on a machine without a GPU (tests/test_cuda.py builds it).
 * Error codes and names are CUDA's own. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { SUCCESS = 0, INVALID_VALUE = 1, MEMORY_ALLOCATION = 2, INVALID_DEVICE = 101 };
/* Allocations above this fail as an out-of-memory device would. */
static const size_t LIMIT = (size_t)1 << 30;

int cudaRuntimeGetVersion(int *version) { *version = 13000; return SUCCESS; }
int cudaDriverGetVersion(int *version) { *version = 13000; return SUCCESS; }
int cudaGetDeviceCount(int *count) { *count = 1; return SUCCESS; }
int cudaSetDevice(int device) { return device == 0 ? SUCCESS : INVALID_DEVICE; }

int cudaDeviceGetAttribute(int *value, int attribute, int device) {
    if (device != 0) return INVALID_DEVICE;
    if (attribute == 75) { *value = 9; return SUCCESS; } /* compute capability major */
    if (attribute == 76) { *value = 0; return SUCCESS; } /* minor */
    return INVALID_VALUE;
}

int cudaGetDeviceProperties(void *properties, int device) {
    if (device != 0) return INVALID_DEVICE;
    memset(properties, 0, 1024);
    strcpy((char *)properties, "Host memory stub");
    return SUCCESS;
}

int cudaMalloc(void **pointer, size_t size) {
    *pointer = size > LIMIT ? NULL : malloc(size);
    return *pointer ? SUCCESS : MEMORY_ALLOCATION;
}

int cudaFree(void *pointer) { free(pointer); return SUCCESS; }

int cudaMemcpyAsync(void *destination, const void *source, size_t count, int kind, void *stream) {
    (void)stream;
    if (kind < 0 || kind > 4 || !destination || !source) return INVALID_VALUE;
    memmove(destination, source, count);
    return SUCCESS;
}

/* Streams are counted, so a test can see every one destroyed. */
static int live_streams = 0;
int stub_live_streams(void) { return live_streams; }

int cudaStreamCreateWithFlags(void **stream, unsigned flags) {
    if (flags != 1) return INVALID_VALUE; /* unifer asks for cudaStreamNonBlocking */
    *stream = malloc(1);
    __atomic_add_fetch(&live_streams, 1, __ATOMIC_SEQ_CST);
    return SUCCESS;
}

int cudaStreamSynchronize(void *stream) { return stream ? SUCCESS : INVALID_VALUE; }

int cudaStreamDestroy(void *stream) {
    if (!stream) return INVALID_VALUE;
    free(stream);
    __atomic_sub_fetch(&live_streams, 1, __ATOMIC_SEQ_CST);
    return SUCCESS;
}

const char *cudaGetErrorName(int error) {
    switch (error) {
    case SUCCESS: return "cudaSuccess";
    case INVALID_VALUE: return "cudaErrorInvalidValue";
    case MEMORY_ALLOCATION: return "cudaErrorMemoryAllocation";
    case INVALID_DEVICE: return "cudaErrorInvalidDevice";
    default: return "cudaErrorUnknown";
    }
}

const char *cudaGetErrorString(int error) {
    switch (error) {
    case SUCCESS: return "no error";
    case INVALID_VALUE: return "invalid argument";
    case MEMORY_ALLOCATION: return "out of memory";
    case INVALID_DEVICE: return "invalid device ordinal";
    default: return "unknown error";
    }
}
