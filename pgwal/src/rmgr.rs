//! Resource manager ids and names, as `src/include/access/rmgrlist.h` orders them (15 to 18).

const NAMES: [&str; 22] = [
    "XLOG",
    "Transaction",
    "Storage",
    "CLOG",
    "Database",
    "Tablespace",
    "MultiXact",
    "RelMap",
    "Standby",
    "Heap2",
    "Heap",
    "Btree",
    "Hash",
    "Gin",
    "Gist",
    "Sequence",
    "SPGist",
    "BRIN",
    "CommitTs",
    "ReplicationOrigin",
    "Generic",
    "LogicalMessage",
];

/// `RM_XLOG_ID`.
pub const RM_XLOG_ID: u8 = 0;
/// `RM_XACT_ID`.
pub const RM_XACT_ID: u8 = 1;
/// The highest built-in resource manager id.
pub const RM_MAX_BUILTIN_ID: u8 = 21;
/// The first id reserved for custom resource managers.
pub const RM_MIN_CUSTOM_ID: u8 = 128;

/// The name pg_waldump prints for a resource manager (`custom###` for custom ones), or `None`
/// for an id that is neither built in nor custom.
pub fn rmgr_name(id: u8) -> Option<&'static str> {
    NAMES
        .get(usize::from(id))
        .copied()
        .or(if id >= RM_MIN_CUSTOM_ID {
            Some("custom")
        } else {
            None
        })
}

/// True for ids a record may carry (`RmgrIdIsValid`).
pub fn rmgr_id_is_valid(id: u8) -> bool {
    id <= RM_MAX_BUILTIN_ID || id >= RM_MIN_CUSTOM_ID
}
