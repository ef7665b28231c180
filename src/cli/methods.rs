//! `retrace methods`: list every attribution method of the registry, what it needs from the
//! engine, and its parameters with defaults and ranges.

use anyhow::Result;

/// List the attribution methods and their parameters.
#[derive(clap::Args)]
pub struct MethodsArgs {}

/// Runs `retrace methods`.
pub fn run(_args: MethodsArgs) -> Result<()> {
    for m in retrace::attribution::registry::all() {
        println!("{}  ({}; needs {})", m.name(), m.summary(), m.needs().describe());
        for p in m.parameters() {
            println!("    --set {}={}  {}; {}", p.key, p.default, p.doc, p.describe_range());
        }
    }
    println!("ensemble:A+B[+…]  mean rank of the members; ensemble-z:A+B[+…]  mean z-score");
    Ok(())
}
