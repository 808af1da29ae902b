//! mcprom
pub mod config;
pub mod sim;
