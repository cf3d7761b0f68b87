//! Every fuzz target for a few seconds, so CI catches what a change breaks
//! (`circles-fuzz --secs 600` is the long run).

use std::time::Duration;

use circles_fuzz::Target;

#[test]
fn every_target_holds_for_a_few_seconds() {
    for target in Target::ALL {
        let cases =
            circles_fuzz::run(target, Duration::from_secs(3)).unwrap_or_else(|f| panic!("{f}"));
        // More than one batch of 64: every batch really runs its cases.
        assert!(cases > 64, "{target:?} ran only {cases} cases");
        eprintln!("{target:?}: {cases} cases");
    }
}
