# Helpers shared by every module: compiler launcher, warnings, the torch precompiled header,
# and moetron_add_module() which gives each module one library target with public headers.

find_program(MOETRON_CCACHE ccache)
if(MOETRON_CCACHE)
  # Sloppiness lets ccache reuse objects built with the precompiled torch header; the base dir
  # (set by scripts/setup.sh) makes paths relative so a fresh clone hits the same cache.
  set(_launcher ${CMAKE_COMMAND} -E env
      "CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime"
      ${MOETRON_CCACHE})
  set(CMAKE_CXX_COMPILER_LAUNCHER ${_launcher})
  set(CMAKE_CUDA_COMPILER_LAUNCHER ${_launcher})
endif()

set(MOETRON_WARNINGS -Wall -Wextra -Wno-unused-parameter)

# moetron_add_module(NAME SOURCES ... [DEPS ...] [TORCH])
#   Creates moetron_<NAME> from src/<NAME>; public headers live in include/moetron/<NAME>.
#   TORCH links LibTorch and reuses the one precompiled <torch/torch.h>.
function(moetron_add_module name)
  cmake_parse_arguments(M "TORCH" "" "SOURCES;DEPS" ${ARGN})
  set(target moetron_${name})
  add_library(${target} STATIC ${M_SOURCES})
  target_include_directories(${target} PUBLIC ${PROJECT_SOURCE_DIR}/include)
  target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${MOETRON_WARNINGS}>)
  if(M_DEPS)
    target_link_libraries(${target} PUBLIC ${M_DEPS})
  endif()
  if(M_TORCH)
    moetron_use_torch(${target})
  endif()
  if(MOETRON_ASAN AND NOT M_TORCH)
    target_compile_options(${target} PRIVATE -fsanitize=address -fno-omit-frame-pointer)
    target_link_options(${target} PUBLIC -fsanitize=address)
  endif()
endfunction()

# Links LibTorch and shares one precompiled header across all torch-using targets.
function(moetron_use_torch target)
  target_link_libraries(${target} PUBLIC ${TORCH_LIBRARIES})
  if(NOT TARGET moetron_torch_pch)
    add_library(moetron_torch_pch STATIC ${PROJECT_SOURCE_DIR}/cmake/torch_pch.cpp)
    target_link_libraries(moetron_torch_pch PUBLIC ${TORCH_LIBRARIES})
    target_compile_options(moetron_torch_pch PRIVATE ${MOETRON_WARNINGS})
    target_precompile_headers(moetron_torch_pch PRIVATE <torch/torch.h>)
  endif()
  if(NOT target STREQUAL "moetron_torch_pch")
    target_precompile_headers(${target} REUSE_FROM moetron_torch_pch)
  endif()
endfunction()
