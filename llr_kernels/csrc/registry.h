// Self-registration of extension ops into the single Python module (see README.md).
//
// Every csrc/*.cpp that exposes functions to Python defines a `void fn(pybind11::module_& m)` that calls
// m.def(...) and registers it with LLR_REGISTER_OPS(fn). bindings.cpp owns the one PYBIND11_MODULE and runs
// every registered function when the module is imported, so adding an op never touches another op's file.
#pragma once

#include <torch/extension.h>

#include <vector>

namespace llr {

using Registrar = void (*)(pybind11::module_&);

// All registrars in the module (function-local static: safe across translation units' static init order).
std::vector<Registrar>& registrars();

struct RegisterOps {
  explicit RegisterOps(Registrar r) { registrars().push_back(r); }
};

}  // namespace llr

#define LLR_REGISTER_OPS(fn) static ::llr::RegisterOps llr_register_ops_##fn(&fn)
