# rnncore_cell_units(<out_var> <template> <output_dir> <extension>)
#
# One generated translation unit per registry line X(name, type) of
# cpp/include/rnncore/cells.hpp, from <template> (configure_file @ONLY with RNNCORE_CELL_NAME and
# RNNCORE_CELL_INDEX, the line's position) into <output_dir>/<name>.<extension>; their paths go
# to <out_var>. The CPU library (cpp/CMakeLists.txt) and the CUDA driver (cpp/cuda/CMakeLists.txt)
# both call it, so the registry is read here only and the list of cells stays in cells.hpp.
# (The registry lines end in a backslash, which CMake lists would read as an escape: the names
# are matched in the file's text instead of splitting it into lines.)
function(rnncore_cell_units out_var template output_dir extension)
  set(registry_header "${PROJECT_SOURCE_DIR}/cpp/include/rnncore/cells.hpp")
  file(READ "${registry_header}" registry)
  string(REGEX MATCHALL "\n *X\\([a-z0-9_]+," entries "${registry}")
  set(sources "")
  set(RNNCORE_CELL_INDEX 0)
  foreach(entry IN LISTS entries)
    string(REGEX REPLACE "^\n *X\\(([a-z0-9_]+),$" "\\1" RNNCORE_CELL_NAME "${entry}")
    set(source "${output_dir}/${RNNCORE_CELL_NAME}.${extension}")
    configure_file("${template}" "${source}" @ONLY)
    list(APPEND sources "${source}")
    math(EXPR RNNCORE_CELL_INDEX "${RNNCORE_CELL_INDEX} + 1")
  endforeach()
  if(RNNCORE_CELL_INDEX EQUAL 0)
    message(FATAL_ERROR "rnncore: no X(name, type) lines found in cpp/include/rnncore/cells.hpp")
  endif()
  set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${registry_header}")
  set(${out_var} "${sources}" PARENT_SCOPE)
endfunction()
