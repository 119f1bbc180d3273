//! The commands that talk to a provider directly: `accounts import`,
//! `probe` and `verify`.

use std::collections::HashMap;
use std::process::ExitCode;

use super::{db_err, exit_unless, open_store, print_json, Failure};
use crate::config::Config;
use crate::providers::UserProfile;

/// `accounts import`: registers the users of a file (with profiles) or of
/// the job table (by id). Exit 1 when the provider refused a user, else 3
/// when lines of the file were rejected (like `load`), else 0.
pub(super) async fn accounts_import(
    config: &Config,
    target: &str,
    batch: Option<&str>,
    file: Option<&str>,
) -> Result<ExitCode, Failure> {
    let (users, rejected) = users_to_register(config, target, batch, file).await?;
    let providers = crate::providers::build_all(config)?;
    let p = &providers
        .iter()
        .find(|(n, _)| n == target)
        .expect("target exists")
        .1;
    let r = p
        .register_users(&users)
        .await
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("cannot register users with {target}: {e}")))?;
    println!(
        "{} users registered with {target} (already registered ones included), {} refused{}",
        r.ok,
        r.failed.len(),
        if rejected > 0 {
            format!(", {rejected} lines rejected")
        } else {
            String::new()
        }
    );
    for (u, why) in r.failed.iter().take(20) {
        eprintln!("refused: {u}: {why}");
    }
    if !r.failed.is_empty() {
        return Ok(ExitCode::from(1));
    }
    Ok(exit_unless(rejected == 0, 3))
}

/// The users `accounts import` registers, and how many lines of the file
/// were rejected: from `file` with profiles, else the job table's by id.
async fn users_to_register(
    config: &Config,
    target: &str,
    batch: Option<&str>,
    file: Option<&str>,
) -> Result<(Vec<UserProfile>, usize), Failure> {
    let target_cfg = config.target(target)?;
    let Some(path) = file else {
        let store = open_store(config).await?;
        let ids = store.users(target, batch).await.map_err(db_err)?;
        return Ok((ids.into_iter().map(UserProfile::bare).collect(), 0));
    };
    let f = crate::load::users::read(path, target_cfg).map_err(|e| Failure::Usage(format!("{e:#}")))?;
    for r in &f.rejected {
        eprintln!("rejected: {path} line {}: {}", r.line, r.reason);
    }
    Ok((f.users, f.rejected.len()))
}

/// `chatferry probe`: measures what the provider's documents leave open.
pub(super) async fn probe(
    config: &Config,
    target: &str,
    users: &[String],
    json: bool,
) -> Result<ExitCode, Failure> {
    let [a, b] = users else {
        return Err(Failure::Usage(
            "--users takes two user ids, e.g. --users probe-a,probe-b".into(),
        ));
    };
    let store = open_store(config).await?;
    let f = crate::probe::run(config, &store, target, [a, b]).await?;
    if json {
        print_json(&f)?;
    } else {
        print!("{}", f.report(target));
    }
    Ok(ExitCode::SUCCESS)
}

/// `chatferry verify`: exit 4 on a mismatch.
pub(super) async fn verify(config: &Config, batch: &str, json: bool) -> Result<ExitCode, Failure> {
    let store = open_store(config).await?;
    let providers: HashMap<_, _> = crate::providers::build_all(config)?.into_iter().collect();
    let r = crate::verify::run(&store, &providers, batch).await?;
    if json {
        print_json(&r)?;
    } else {
        print!("{}", r.render());
    }
    Ok(exit_unless(r.clean(), 4))
}
