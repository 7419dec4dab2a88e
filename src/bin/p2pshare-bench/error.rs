//! The benchmark's one error type.

/// Errors of the benchmark.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BenchError {
    /// Local I/O.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Setting up the swarm failed.
    #[error("{0}")]
    Setup(String),
    /// A child process failed or answered nonsense.
    #[error("child process: {0}")]
    Child(String),
}
