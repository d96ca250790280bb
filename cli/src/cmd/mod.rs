//! One module per subcommand: flags, progress, printing; the work is a library call.

pub mod backup;
pub mod basebackup;
pub mod check;
pub mod combine;
pub mod expire;
pub mod identify;
pub mod info;
pub mod init;
pub mod keygen;
pub mod receivewal;
pub mod restore;
pub mod verify;
pub mod walfetch;
