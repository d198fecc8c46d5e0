// Fixture of the layering gate's self-test: core (layer 1) including nn (layer 3) must be refused.
#pragma once
#include <flowprior/nn/linear.hpp>
