/// @file
/// The umbrella header of flowprior::datasets (docs/data.md): image folders and IDX files,
/// decoding, resizing and crops, features from .npy and safetensors files, and the batch loader.
/// Link the CMake target flowprior::datasets (stb_image, zlib, Threads).
#pragma once

#include <flowprior/datasets/decode.hpp>
#include <flowprior/datasets/features.hpp>
#include <flowprior/datasets/folder.hpp>
#include <flowprior/datasets/idx.hpp>
#include <flowprior/datasets/loader.hpp>
#include <flowprior/datasets/random.hpp>
#include <flowprior/datasets/source.hpp>
#include <flowprior/datasets/transform.hpp>
