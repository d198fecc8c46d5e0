# Layering gate (docs/architecture.md "Layers"): every header may include flowprior headers of its
# own folder and of folders of a LOWER layer only. Run as
#   cmake -DROOTS="<include dir>;<include dir>..." -P check_layering.cmake
# Fails (non-zero exit, one line per offending include) when a header includes a folder of its own
# layer or above, or a folder that no layer lists (so a new folder must be placed on purpose).
#
# Layers, lowest first. A "folder" is the first path component under flowprior/, or the file name
# for the headers at the top (config.hpp, version.hpp, prior.hpp, flowprior.hpp).
set(_layers
  "config.hpp version.hpp"           # 0  build configuration and version
  "core"                             # 1  types, views, errors, checks, random, conventions
  "backend"                          # 2  CpuBackend primitives, GEMM engines, thread team
  "nn analytic data io optim"        # 3  layers and fields, exact mixtures, projections, I/O, Adam
  "prior.hpp"                        # 4  a field seen in a time convention
  "loss ode"                         # 5  flow-matching and alignment losses, ODE solvers
  "train eval"                       # 6  trainer, aligner, checkpoints; evaluation metrics
  "flowprior.hpp"                    # 7  the umbrella header of the numerics library
  "plot datasets mpi"                # 8  optional components flowprior::plot, flowprior::datasets,
                                     #    flowprior::mpi (the MPI communicator)
  "toy2d")                           # 9  optional component flowprior::toy2d (examples/extras)

set(_rank 0)
foreach(_layer IN LISTS _layers)
  string(REPLACE " " ";" _names "${_layer}")
  foreach(_name IN LISTS _names)
    set(_rank_of_${_name} ${_rank})
  endforeach()
  math(EXPR _rank "${_rank} + 1")
endforeach()

# "flowprior/nn/linear.hpp" -> "nn"; "flowprior/prior.hpp" -> "prior.hpp".
function(_folder_of rel out)
  string(REGEX REPLACE "^flowprior/" "" _rest "${rel}")
  string(REGEX MATCH "^[^/]+" _first "${_rest}")
  set(${out} "${_first}" PARENT_SCOPE)
endfunction()

if(NOT ROOTS)
  message(FATAL_ERROR "check_layering: pass -DROOTS=<include dirs>")
endif()
set(_violations 0)
set(_checked 0)
foreach(_root IN LISTS ROOTS)
  file(GLOB_RECURSE _headers RELATIVE "${_root}" "${_root}/flowprior/*.hpp" "${_root}/flowprior/*.cuh")
  foreach(_rel IN LISTS _headers)
    math(EXPR _checked "${_checked} + 1")
    _folder_of("${_rel}" _own)
    if(NOT DEFINED _rank_of_${_own})
      message("layering: ${_root}/${_rel}: its folder '${_own}' is on no layer")
      math(EXPR _violations "${_violations} + 1")
      continue()
    endif()
    file(STRINGS "${_root}/${_rel}" _includes REGEX "^[ \t]*#[ \t]*include[ \t]*[<\"]flowprior/")
    foreach(_line IN LISTS _includes)
      string(REGEX MATCH "flowprior/[^>\"]+" _target "${_line}")
      _folder_of("${_target}" _dep)
      if(_dep STREQUAL _own)
        continue()
      endif()
      if(NOT DEFINED _rank_of_${_dep})
        message("layering: ${_root}/${_rel} includes <${_target}>: folder '${_dep}' is on no layer")
        math(EXPR _violations "${_violations} + 1")
      elseif(NOT _rank_of_${_dep} LESS _rank_of_${_own})
        message("layering: ${_root}/${_rel} (layer ${_rank_of_${_own}}, ${_own}) includes "
                "<${_target}> (layer ${_rank_of_${_dep}}, ${_dep}): a header may include only its "
                "own folder and lower layers")
        math(EXPR _violations "${_violations} + 1")
      endif()
    endforeach()
  endforeach()
endforeach()
if(_checked EQUAL 0)
  message(FATAL_ERROR "check_layering: no header found under ${ROOTS}")
endif()
if(_violations GREATER 0)
  message(FATAL_ERROR "check_layering: ${_violations} include(s) break the layering (${_checked} headers)")
endif()
message(STATUS "check_layering: ${_checked} headers, every include goes down the layers")
