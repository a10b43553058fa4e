//! The library's surface for the benchmarks, the fuzz targets and the tests that drive the
//! journal and the scheduler directly (the model test, the power-loss test). Everything else is
//! private to the crate; nothing here is a stable API.

pub use crate::config::{parse as parse_config, Publish};
pub use crate::http::exchange_offline;
pub use crate::job::QueuedJob;
pub use crate::journal::{
    fuzz_decode, Hook, JobFilter, JobState, Journal, LogFile, Op, Outcome, FILE_NAME, LOG_EXTENSION,
};
pub use crate::publish::{publish, Gate};
pub use crate::scheduler::{recover, Action, Plan};
pub use crate::secret::hash_secret;
pub use crate::sys::{group_exists, spread_new_directories};
