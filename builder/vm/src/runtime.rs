//! The tokio runtime the VM layer runs on, and a blocking façade over it:
//! the callers (the CLI, the sequential scenarios) stay synchronous.

use std::future::Future;
use std::sync::OnceLock;

/// The process-wide runtime: console readers, QMP readers and signal
/// watchers run on its two worker threads, which live as long as the process.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("applbuild-vm")
            .enable_all()
            .build()
            .expect("the tokio runtime starts")
    })
}

/// Runs `future` to completion on the calling thread (which must not be a
/// runtime thread itself).
pub fn block_on<F: Future>(future: F) -> F::Output {
    runtime().block_on(future)
}
