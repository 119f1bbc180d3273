//! `chatferry load` and `chatferry plan`: JSON Lines in, jobs out (or,
//! for `plan`, what would come out).

use std::process::ExitCode;

use super::args::{LoadArgs, PlanArgs};
use super::{exit_unless, now_ms, open_store, print_json, Failure};
use crate::config::Config;

/// `chatferry load`: exit 3 when some lines were rejected.
pub(super) async fn load(config: &Config, args: LoadArgs) -> Result<ExitCode, Failure> {
    let LoadArgs {
        target,
        batch,
        rejects,
        priority,
        files,
    } = args;
    config.target(&target)?;
    let store = open_store(config).await?;
    let opts = crate::load::LoadOptions {
        target: target.clone(),
        batch: batch.clone(),
        rejects: rejects.clone(),
        files,
        now_ms: now_ms(),
        progress: true,
        priority,
    };
    let s = crate::load::run(&store, config, opts).await?;
    let rate = if s.seconds > 0.0 {
        s.lines as f64 / s.seconds
    } else {
        0.0
    };
    println!(
        "loaded batch {batch} for target {target}: {} lines, {} accepted, {} rejected; \
         {} jobs new, {} already loaded; {:.1} s ({:.0} lines/s)",
        s.lines,
        s.accepted,
        s.rejected,
        s.jobs_new,
        s.jobs_planned - s.jobs_new,
        s.seconds,
        rate
    );
    if s.rejected > 0 {
        match &rejects {
            Some(p) => eprintln!("{} lines rejected; reasons are in {}", s.rejected, p.display()),
            None => eprintln!("{} lines rejected; pass --rejects FILE to keep them", s.rejected),
        }
    }
    Ok(exit_unless(s.rejected == 0, 3))
}

/// `chatferry plan`: no database, nothing written; exit 3 when some lines
/// would be rejected.
pub(super) fn plan(config: &Config, args: &PlanArgs) -> Result<ExitCode, Failure> {
    let t = config.target(&args.target)?;
    let r = crate::load::plan::run(crate::load::plan::PlanOptions {
        target_name: &args.target,
        target: t,
        files: &args.files,
        now_ms: now_ms(),
        max_line: config.load.max_line_bytes.max(1024),
        replicas: args.replicas,
    })?;
    if args.json {
        print_json(&r)?;
    } else {
        print!("{}", crate::load::plan::render(&r));
    }
    Ok(exit_unless(r.rejected == 0, 3))
}
