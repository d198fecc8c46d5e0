/// @file
/// @brief Library version. CMake parses these macros (CLI11 pattern); keep the string in sync.
#pragma once

#define FLOWPRIOR_VERSION_MAJOR 0
#define FLOWPRIOR_VERSION_MINOR 1
#define FLOWPRIOR_VERSION_PATCH 0
#define FLOWPRIOR_VERSION_STRING "0.1.0"
