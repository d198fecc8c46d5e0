/// @file
/// Compile-time knobs of flowprior. Every macro here can be defined by the user before the first
/// flowprior include (or on the command line) to override the default.
#pragma once

/// Marks scalar formulas that are shared between the CPU backend and CUDA kernels.
#ifndef FLOWPRIOR_HD
#if defined(__CUDACC__)
#define FLOWPRIOR_HD __host__ __device__
#else
#define FLOWPRIOR_HD
#endif
#endif

/// Internal invariant checks (not input validation; public entry points always validate their
/// arguments). On unless NDEBUG or FLOWPRIOR_NO_DEBUG is defined; when on, a failed assertion
/// throws flowprior::assert_error (see core/check.hpp; define FLOWPRIOR_ASSERT to override).
#ifndef FLOWPRIOR_ENABLE_ASSERTS
#if defined(NDEBUG) || defined(FLOWPRIOR_NO_DEBUG)
#define FLOWPRIOR_ENABLE_ASSERTS 0
#else
#define FLOWPRIOR_ENABLE_ASSERTS 1
#endif
#endif
