//! Removes every circle service this machine has — the same as
//! `launcher cleanup`: stop, disable (or boot out), delete the unit files or
//! plists, reload, reset failed state. Only services named
//! `tf.ourworld.circles.*` are touched.
//!
//!     cargo run --example cleanup_example

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let removed = circles_launcher::cleanup_launcher().await?;
    if removed.is_empty() {
        println!("no circle services installed; nothing to remove");
    }
    for name in &removed {
        println!("removed {name}");
    }
    Ok(())
}
