# stb_image_write and stb_image from the system (Debian libstb-dev) for flowprior::plot
# (docs/plotting.md "PNG encoding") and flowprior::datasets (docs/data.md "Decoding"). Used by
# flowprior's own build and, installed beside flowpriorConfig.cmake, by
# find_package(flowprior COMPONENTS plot datasets).
#
# flowprior_find_stb(<out-var>)
#   stb ships no CMake package. This looks for the header <stb/stb_image_write.h> and the
#   compiled library libstb, which holds the implementations of stb_image_write and stb_image
#   (Debian builds it with STB_IMAGE_WRITE_IMPLEMENTATION and STB_IMAGE_IMPLEMENTATION, so no
#   program that links it may define either macro again).
#   When both are found it creates the imported target flowprior_stb and sets <out-var> to TRUE;
#   otherwise it sets <out-var> to FALSE.

include_guard(GLOBAL)

function(flowprior_find_stb out)
  if(TARGET flowprior_stb)
    set(${out} TRUE PARENT_SCOPE)
    return()
  endif()
  find_path(FLOWPRIOR_STB_INCLUDE_DIR stb/stb_image_write.h
            DOC "folder holding stb/stb_image_write.h (Debian libstb-dev)")
  find_library(FLOWPRIOR_STB_LIBRARY stb DOC "libstb, with stb_image_write's implementation")
  if(FLOWPRIOR_STB_INCLUDE_DIR AND FLOWPRIOR_STB_LIBRARY)
    add_library(flowprior_stb UNKNOWN IMPORTED)
    set_target_properties(flowprior_stb PROPERTIES
      IMPORTED_LOCATION "${FLOWPRIOR_STB_LIBRARY}"
      INTERFACE_INCLUDE_DIRECTORIES "${FLOWPRIOR_STB_INCLUDE_DIR}")
    set(${out} TRUE PARENT_SCOPE)
  else()
    set(${out} FALSE PARENT_SCOPE)
  endif()
endfunction()
