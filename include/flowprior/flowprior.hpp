/// @file
/// Umbrella header of the numerics library (target flowprior::flowprior, Eigen only): fields,
/// layers, losses, optimizers, ODE, I/O, trainer and aligner. Includes no CUDA header, and none of
/// the optional components (flowprior::plot, flowprior::toy2d: docs/architecture.md).
#pragma once

#include <flowprior/analytic/gaussian_mixture.hpp>
#include <flowprior/backend/cpu.hpp>
#include <flowprior/config.hpp>
#include <flowprior/core/activation.hpp>
#include <flowprior/core/check.hpp>
#include <flowprior/core/convention.hpp>
#include <flowprior/core/error.hpp>
#include <flowprior/core/math.hpp>
#include <flowprior/core/random.hpp>
#include <flowprior/core/size.hpp>
#include <flowprior/core/types.hpp>
#include <flowprior/data/projection.hpp>
#include <flowprior/io/npy.hpp>
#include <flowprior/io/safetensors.hpp>
#include <flowprior/io/state_dict.hpp>
#include <flowprior/loss/draws.hpp>
#include <flowprior/loss/flow_loss.hpp>
#include <flowprior/nn/adaln_blocks.hpp>
#include <flowprior/nn/adaln_mlp.hpp>
#include <flowprior/nn/linear.hpp>
#include <flowprior/nn/mlp.hpp>
#include <flowprior/nn/params.hpp>
#include <flowprior/nn/time_embedding.hpp>
#include <flowprior/ode/flow_ode.hpp>
#include <flowprior/ode/integrate.hpp>
#include <flowprior/optim/optimizer.hpp>
#include <flowprior/prior.hpp>
#include <flowprior/train/align.hpp>
#include <flowprior/train/checkpoint.hpp>
#include <flowprior/train/communicator.hpp>
#include <flowprior/train/trainer.hpp>
#include <flowprior/version.hpp>
