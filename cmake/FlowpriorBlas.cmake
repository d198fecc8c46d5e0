# GEMM engines of the CPU backend (docs/backends.md "GEMM engines"). Used by flowprior's own build
# and, installed beside flowpriorConfig.cmake, by find_package(flowprior COMPONENTS blas).
#
# flowprior_find_cblas(<engine> <out-var>)
#   engine: openblas or blis. flowprior runs the BLAS single-threaded on each block of its own
#   OpenMP team (one thread pool for the products and the element-wise passes), so it wants a
#   build that is safe to call from several threads at once and allocates nothing per call:
#   BLIS's serial build, then its OpenMP and pthread builds; OpenBLAS's OpenMP build, then its
#   pthread build (Debian's serial OpenBLAS is not safe to call concurrently: flowprior then keeps
#   its products on one thread), then the serial one. Debian: libblis-serial-dev,
#   libopenblas-openmp-dev, ... A plain install anywhere on the search path comes last.
#   docs/backends.md "GEMM engines" has the measurements behind this order. On success creates the imported INTERFACE target
#   flowprior_cblas_<engine> (library, include directory, FLOWPRIOR_CBLAS_<ENGINE>) and sets
#   <out-var> to its name; otherwise sets <out-var> to "".
#
# flowprior_select_cblas(<choice> <out-target> <out-engine>)
#   choice: AUTO (OpenBLAS, then BLIS, then none), openblas, blis, or eigen/none. A named engine
#   that is not found is a fatal error; AUTO without any BLAS gives "" and the engine "eigen".

include_guard(GLOBAL)

function(flowprior_find_cblas engine out)
  set(${out} "" PARENT_SCOPE)
  set(_target flowprior_cblas_${engine})
  if(TARGET ${_target})
    set(${out} ${_target} PARENT_SCOPE)
    return()
  endif()
  if(engine STREQUAL "openblas")
    set(_names openblas)
    set(_define FLOWPRIOR_CBLAS_OPENBLAS=1)
    set(_variants openmp pthread serial)
  elseif(engine STREQUAL "blis")
    set(_names blis)
    set(_define FLOWPRIOR_CBLAS_BLIS=1)
    set(_variants serial openmp pthread)
  else()
    message(FATAL_ERROR "flowprior: unknown GEMM engine '${engine}' (openblas or blis)")
  endif()
  set(_libdirs)
  set(_incdirs)
  foreach(_prefix IN LISTS CMAKE_SYSTEM_PREFIX_PATH)
    if(CMAKE_LIBRARY_ARCHITECTURE)
      list(APPEND _libdirs "${_prefix}/lib/${CMAKE_LIBRARY_ARCHITECTURE}")
      list(APPEND _incdirs "${_prefix}/include/${CMAKE_LIBRARY_ARCHITECTURE}")
    endif()
    list(APPEND _libdirs "${_prefix}/lib")
    list(APPEND _incdirs "${_prefix}/include")
  endforeach()
  foreach(_variant IN LISTS _variants)
    set(_lib_var FLOWPRIOR_${engine}_${_variant}_LIBRARY)
    set(_inc_var FLOWPRIOR_${engine}_${_variant}_INCLUDE_DIR)
    list(TRANSFORM _libdirs APPEND "/${engine}-${_variant}" OUTPUT_VARIABLE _vlib)
    list(TRANSFORM _incdirs APPEND "/${engine}-${_variant}" OUTPUT_VARIABLE _vinc)
    find_library(${_lib_var} NAMES ${_names} PATHS ${_vlib} NO_DEFAULT_PATH)
    find_path(${_inc_var} cblas.h PATHS ${_vinc} NO_DEFAULT_PATH)
    mark_as_advanced(${_lib_var} ${_inc_var})
    if(${_lib_var} AND ${_inc_var})
      set(_lib "${${_lib_var}}")
      set(_inc "${${_inc_var}}")
      set(_how "${_variant} build")
      break()
    endif()
  endforeach()
  if(NOT _lib)  # a plain install: the library on the search path, cblas.h beside the engine's headers
    find_library(FLOWPRIOR_${engine}_LIBRARY NAMES ${_names})
    find_path(FLOWPRIOR_${engine}_INCLUDE_DIR cblas.h PATH_SUFFIXES ${engine})
    mark_as_advanced(FLOWPRIOR_${engine}_LIBRARY FLOWPRIOR_${engine}_INCLUDE_DIR)
    if(FLOWPRIOR_${engine}_LIBRARY AND FLOWPRIOR_${engine}_INCLUDE_DIR)
      set(_lib "${FLOWPRIOR_${engine}_LIBRARY}")
      set(_inc "${FLOWPRIOR_${engine}_INCLUDE_DIR}")
      set(_how "search path")
    endif()
  endif()
  if(NOT _lib)
    return()
  endif()
  add_library(${_target} INTERFACE IMPORTED GLOBAL)
  set_target_properties(${_target} PROPERTIES
    INTERFACE_LINK_LIBRARIES "${_lib}"
    INTERFACE_INCLUDE_DIRECTORIES "${_inc}"
    INTERFACE_COMPILE_DEFINITIONS "FLOWPRIOR_CBLAS=1;${_define}")
  if(NOT FLOWPRIOR_FIND_QUIETLY)
    message(STATUS "flowprior: GEMM engine ${engine} (${_how}): ${_lib}")
  endif()
  set(${out} ${_target} PARENT_SCOPE)
endfunction()

function(flowprior_select_cblas choice out_target out_engine)
  string(TOLOWER "${choice}" _choice)
  set(${out_target} "" PARENT_SCOPE)
  set(${out_engine} "eigen" PARENT_SCOPE)
  if(_choice STREQUAL "eigen" OR _choice STREQUAL "none" OR _choice STREQUAL "off")
    return()
  endif()
  if(_choice STREQUAL "auto" OR _choice STREQUAL "")
    set(_candidates openblas blis)
  elseif(_choice STREQUAL "openblas" OR _choice STREQUAL "blis")
    set(_candidates ${_choice})
  else()
    message(FATAL_ERROR
      "flowprior: FLOWPRIOR_BLAS must be AUTO, openblas, blis or eigen (got '${choice}')")
  endif()
  foreach(_engine IN LISTS _candidates)
    flowprior_find_cblas(${_engine} _t)
    if(_t)
      set(${out_target} ${_t} PARENT_SCOPE)
      set(${out_engine} ${_engine} PARENT_SCOPE)
      return()
    endif()
  endforeach()
  if(NOT _choice STREQUAL "auto" AND NOT _choice STREQUAL "")
    message(FATAL_ERROR "flowprior: FLOWPRIOR_BLAS=${choice} but ${choice} (library and cblas.h) "
                        "was not found; on Debian: apt-get install lib${choice}-openmp-dev")
  endif()
endfunction()

# flowprior_fastest_engine(<out-engine> <compile-options> <openmp-target>)
#   Times CpuBackend::gemm (a 512 x 2048 x 512 sgemm, best of seven, cmake/
#   flowprior_engine_probe.cpp) on Eigen's engine and on every BLAS found, compiled with
#   <compile-options> and linked with <openmp-target>, and sets <out-engine> to the fastest
#   (eigen, openblas or blis). Used by FLOWPRIOR_BLAS=AUTO for flowprior's own examples and
#   benchmarks: a BLAS is not always faster (OpenBLAS 0.3.21 runs a generic SSE3 kernel on CPUs it
#   does not recognise). The result is cached per compiler and options (FLOWPRIOR_ENGINE_RATES).
function(flowprior_fastest_engine out options openmp_target)
  set(_key "${CMAKE_CXX_COMPILER};${options};${CMAKE_BUILD_TYPE};$ENV{OPENBLAS_CORETYPE}")
  if(DEFINED FLOWPRIOR_ENGINE_RATES_KEY AND FLOWPRIOR_ENGINE_RATES_KEY STREQUAL _key
     AND DEFINED FLOWPRIOR_ENGINE_FASTEST)
    set(${out} ${FLOWPRIOR_ENGINE_FASTEST} PARENT_SCOPE)
    return()
  endif()
  set(_best eigen)
  set(_best_rate 0)
  set(_rates "")
  foreach(_engine IN ITEMS eigen openblas blis)
    set(_libs Eigen3::Eigen ${openmp_target})
    if(NOT _engine STREQUAL "eigen")
      flowprior_find_cblas(${_engine} _t)
      if(NOT _t)
        continue()
      endif()
      list(APPEND _libs ${_t})
    endif()
    try_run(_run _compiled
      "${CMAKE_BINARY_DIR}/flowprior_engine_probe/${_engine}"
      "${CMAKE_CURRENT_FUNCTION_LIST_DIR}/flowprior_engine_probe.cpp"
      CMAKE_FLAGS "-DINCLUDE_DIRECTORIES=${PROJECT_SOURCE_DIR}/include"
      COMPILE_DEFINITIONS ${options}
      LINK_LIBRARIES ${_libs}
      CXX_STANDARD 17
      RUN_OUTPUT_VARIABLE _out)
    if(NOT _compiled OR NOT _run EQUAL 0)
      message(STATUS "flowprior: GEMM engine probe of ${_engine} did not run; skipped")
      continue()
    endif()
    string(STRIP "${_out}" _out)
    string(REPLACE " " ";" _fields "${_out}")
    list(GET _fields 0 _rate)
    list(LENGTH _fields _nfields)
    if(_nfields GREATER 1)
      list(GET _fields 1 _core)
      list(APPEND _rates "${_engine} (${_core}) ${_rate}")
      # OpenBLAS 0.3.21 falls back to its SSE3 kernel (Prescott) on CPUs newer than it knows
      # (Sapphire Rapids, Zen 4); OPENBLAS_CORETYPE, read when the library loads, overrides it.
      if(_core STREQUAL "Prescott" AND NOT DEFINED ENV{OPENBLAS_CORETYPE})
        message(STATUS "flowprior: OpenBLAS runs its generic SSE3 kernel (Prescott) on this CPU. "
                       "If the CPU has AVX-512 or AVX2, export OPENBLAS_CORETYPE=SkylakeX or "
                       "Haswell before configuring and running (docs/backends.md \"GEMM engines\")")
      endif()
    else()
      list(APPEND _rates "${_engine} ${_rate}")
    endif()
    if(_rate GREATER _best_rate)
      set(_best ${_engine})
      set(_best_rate ${_rate})
    endif()
  endforeach()
  list(JOIN _rates ", " _rates_text)
  message(STATUS "flowprior: sgemm 512 x 2048 x 512 GFLOP/s: ${_rates_text}; fastest ${_best}")
  set(FLOWPRIOR_ENGINE_RATES_KEY "${_key}" CACHE INTERNAL "")
  set(FLOWPRIOR_ENGINE_RATES "${_rates_text}" CACHE INTERNAL "")
  set(FLOWPRIOR_ENGINE_FASTEST ${_best} CACHE INTERNAL "")
  set(${out} ${_best} PARENT_SCOPE)
endfunction()
