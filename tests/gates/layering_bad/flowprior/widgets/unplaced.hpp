// Fixture of the layering gate's self-test: a folder that no layer lists must be refused.
#pragma once
#include <flowprior/core/types.hpp>
