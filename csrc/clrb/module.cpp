// The Python module `csakd._C`: empty, importing it loads this library, whose static initialisers (clrb.cpp,
// clrb_cpu.cpp, clrb_cuda.cpp) register the ops reached as torch.ops.csakd.*. Python.h is included only here so
// that no torch header is compiled under its macros.
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
