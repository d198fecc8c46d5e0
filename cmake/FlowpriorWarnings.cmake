# Private flag targets for flowprior's own tests, examples and benchmarks (CLI11 CLI11Warnings.cmake
# pattern). None of these is exported or linked by flowprior::flowprior, so a consumer's build never
# sees our warnings, -Werror, sanitizers or -march=native.
include_guard(GLOBAL)

# flowprior_warnings: warnings, -Werror, sanitizers. Linked by tests, examples and benchmarks.
add_library(flowprior_warnings INTERFACE)

# -Wconversion is deliberately absent: Eigen's signed Index vs. std::size_t and int loop counters
# make it fire on nearly every shape expression, burying real diagnostics in noise.
set(_flowprior_gcc_like "$<COMPILE_LANG_AND_ID:CXX,GNU,Clang,AppleClang>")
target_compile_options(flowprior_warnings INTERFACE
  "$<${_flowprior_gcc_like}:-Wall;-Wextra;-Wpedantic;-Wshadow>"
  "$<$<COMPILE_LANG_AND_ID:CXX,MSVC>:/W4>"
  # CUDA: host-compiler warnings, and silence the Eigen-in-.cu diagnostics measured in the appendix.
  "$<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra;--diag-suppress=20011,20012,20013,20014,20015>")

if(FLOWPRIOR_WERROR)
  target_compile_options(flowprior_warnings INTERFACE
    "$<${_flowprior_gcc_like}:-Werror>"
    "$<$<COMPILE_LANG_AND_ID:CXX,MSVC>:/WX>"
    "$<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Werror;--Werror=all-warnings>")
endif()

# Sanitizers: host code only. FLOWPRIOR_SANITIZE is a list such as "address;undefined".
if(FLOWPRIOR_SANITIZE)
  list(JOIN FLOWPRIOR_SANITIZE "," _flowprior_sanitizers)
  set(_flowprior_san_flags "-fsanitize=${_flowprior_sanitizers};-fno-omit-frame-pointer")
  if("undefined" IN_LIST FLOWPRIOR_SANITIZE)
    # Make UBSan findings fatal so CTest sees a failing exit code.
    list(APPEND _flowprior_san_flags "-fno-sanitize-recover=undefined")
  endif()
  if("float-cast-overflow" IN_LIST FLOWPRIOR_SANITIZE)
    # Not part of "undefined": a float -> int conversion out of range (a plot coordinate at 1e9
    # pixels) is undefined behaviour all the same, and fatal here.
    list(APPEND _flowprior_san_flags "-fno-sanitize-recover=float-cast-overflow")
  endif()
  target_compile_options(flowprior_warnings INTERFACE
    "$<$<COMPILE_LANGUAGE:CXX>:${_flowprior_san_flags}>")
  target_link_options(flowprior_warnings INTERFACE
    "$<$<LINK_LANGUAGE:CXX>:-fsanitize=${_flowprior_sanitizers}>")
  message(STATUS "flowprior: sanitizers ${_flowprior_sanitizers}")
endif()

# flowprior_native: -march=native under FLOWPRIOR_NATIVE. Linked by examples and benchmarks only;
# never by tests (results must not depend on the build machine) and never by the library.
add_library(flowprior_native INTERFACE)
if(FLOWPRIOR_NATIVE)
  target_compile_options(flowprior_native INTERFACE "$<${_flowprior_gcc_like}:-march=native>")
  # GCC 12.1-12.2 bug 105593: its own AVX-512 intrinsics (the `__Y = __Y` idiom of
  # _mm512_undefined_*, reached through Eigen's packet math under -march=native) raise false
  # -Wmaybe-uninitialized that -isystem does not silence; fixed in 12.3 (docs/pitfalls.md).
  target_compile_options(flowprior_native INTERFACE
    "$<$<AND:$<CXX_COMPILER_ID:GNU>,$<VERSION_GREATER_EQUAL:$<CXX_COMPILER_VERSION>,12>,$<VERSION_LESS:$<CXX_COMPILER_VERSION>,12.3>>:-Wno-maybe-uninitialized>")
endif()
