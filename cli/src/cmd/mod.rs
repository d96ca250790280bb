//! One module per subcommand: flags, progress, printing; the work is a library call.

pub mod basebackup;
pub mod combine;
pub mod identify;
pub mod receivewal;
pub mod restore;
pub mod verify;
pub mod walfetch;
