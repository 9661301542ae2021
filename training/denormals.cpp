// Flush-to-zero and denormals-are-zero on every thread of the OpenMP team that torch's intra-op
// work (and its BLAS) runs on. torch.set_flush_denormal sets them on the calling thread only, so
// the workers' share of a parallel op would still take the slow denormal path.
#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#define HAS_MXCSR 1
#endif

static const unsigned int FLUSH_BITS = 0x8040u;  // MXCSR flush-to-zero (bit 15) and denormals-are-zero (bit 6)

static void set_mxcsr_flush(int on) {
#ifdef HAS_MXCSR
    unsigned int csr = _mm_getcsr();
    _mm_setcsr(on ? (csr | FLUSH_BITS) : (csr & ~FLUSH_BITS));
#else
    (void)on;
#endif
}

// Returns the number of threads whose mode was set: 0 where the CPU has no MXCSR.
extern "C" int set_flush_denormal_on_team(int on) {
#ifndef HAS_MXCSR
    (void)on;
    return 0;
#else
    int threads = 0;
#pragma omp parallel reduction(+ : threads)
    {
        set_mxcsr_flush(on);
        threads += 1;
    }
    return threads;
#endif
}
