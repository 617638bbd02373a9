//! sea-orm entities, one file per table. Enums stored as short strings so
//! both backends hold the same values.

pub mod alert;
pub mod alert_delivery;
pub mod alert_history;
pub mod audit_log;
pub mod dashboard;
pub mod dashboard_permission;
pub mod dashboard_version;
pub mod persisted_operation;
pub mod saved_query;
pub mod share_link;
pub mod tenant;
pub mod user;
