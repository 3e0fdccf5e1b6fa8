//! `--demo`: on an empty store, a demo SIP account whose password is printed once, so a softphone
//! can register straight away. Nothing demo-like exists without the flag.

use std::path::Path;

use chrono::Utc;
use rand::Rng;
use uuid::Uuid;

use crate::config::LiveConfig;
use crate::store::{Store, User};

/// The demo account's username.
pub const DEMO_USER: &str = "demo";

/// Creates the demo account when the store has no users, printing its credentials once.
pub async fn ensure_demo_account(
    store: &dyn Store,
    config: &LiveConfig,
    data_dir: &Path,
    listeners: &[crate::sip::ListenSpec],
) -> Result<(), String> {
    let users = store
        .list_users()
        .await
        .map_err(|e| format!("reading users: {e}"))?;
    if !users.is_empty() {
        return Ok(());
    }
    let domain = config.settings().default_sip_domain.clone();
    let password: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(12)
        .map(char::from)
        .collect();
    let ha1 = crate::api::users::ha1s(DEMO_USER, &domain, &password);
    store
        .create_user(User {
            id: Uuid::new_v4(),
            username: DEMO_USER.to_owned(),
            domain: domain.clone(),
            display_name: Some("Demo User".to_owned()),
            upn: None,
            phone_number: None,
            enabled: true,
            activated: false,
            ha1,
            created_at: Utc::now(),
            teams: Default::default(),
        })
        .await
        .map_err(|e| format!("creating the demo account: {e}"))?;
    println!();
    println!("  Demo account created (shown once):");
    println!("    SIP user:     {DEMO_USER}");
    println!("    password:     {password}");
    println!("    domain/realm: {domain}");
    let on: Vec<String> = listeners.iter().map(|l| l.to_string()).collect();
    println!(
        "  Register a softphone with user {DEMO_USER}@{domain} to this machine: {}.",
        on.join(", ")
    );
    println!(
        "  Admin token for the REST API: {}",
        data_dir.join("admin-token").display()
    );
    println!();
    Ok(())
}
