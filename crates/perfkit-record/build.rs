fn main() {
    // Emits Py_3_10 / Py_3_11 / ... cfgs so that each interpreter's internals get their own path.
    pyo3_build_config::use_pyo3_cfgs();
}
