# Format gate (docs/architecture.md "Gates"): every C++ source of the project is clang-format clean
# under the repository's .clang-format.
#   cmake -DCLANG_FORMAT=<clang-format> -DSOURCE_DIR=<repository root> -P check_format.cmake
# The vendored single-header test framework (tests/support/catch.hpp) is not ours and is skipped;
# so are build folders. To fix: clang-format -i <the files listed>.
if(NOT CLANG_FORMAT OR NOT SOURCE_DIR)
  message(FATAL_ERROR "check_format: pass -DCLANG_FORMAT and -DSOURCE_DIR")
endif()
set(_files "")
foreach(_dir IN ITEMS include examples benchmarks tests cmake)
  file(GLOB_RECURSE _found "${SOURCE_DIR}/${_dir}/*.hpp" "${SOURCE_DIR}/${_dir}/*.cpp"
       "${SOURCE_DIR}/${_dir}/*.h" "${SOURCE_DIR}/${_dir}/*.cuh" "${SOURCE_DIR}/${_dir}/*.cu")
  list(APPEND _files ${_found})
endforeach()
list(FILTER _files EXCLUDE REGEX "/tests/support/catch\\.hpp$")
list(FILTER _files EXCLUDE REGEX "/build[^/]*/")
list(LENGTH _files _n)
if(_n EQUAL 0)
  message(FATAL_ERROR "check_format: no source found under ${SOURCE_DIR}")
endif()
execute_process(COMMAND "${CLANG_FORMAT}" --dry-run --Werror ${_files}
                WORKING_DIRECTORY "${SOURCE_DIR}"
                RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _out)
if(NOT _rc EQUAL 0)
  string(REGEX MATCHALL "[^\n]*: error: code should be clang-formatted" _lines "${_out}")
  set(_bad "")
  foreach(_l IN LISTS _lines)
    string(REGEX REPLACE ":[0-9]+:[0-9]+: error: code should be clang-formatted$" "" _f "${_l}")
    list(APPEND _bad "${_f}")
  endforeach()
  list(REMOVE_DUPLICATES _bad)
  list(LENGTH _bad _nbad)
  string(REPLACE ";" "\n  " _list "${_bad}")
  string(SUBSTRING "${_out}" 0 3000 _head)
  message(FATAL_ERROR "check_format: ${_nbad} of ${_n} files are not clang-format clean "
                      "(clang-format -i them):\n  ${_list}\n${_head}")
endif()
message(STATUS "check_format: ${_n} files are clang-format clean")
