//! Readiness (`/readyz`): a node is ready only while every check passes within its bound
//! and it is not draining. The checks come from the layers that know (the store's write
//! probe, the cluster's bus subscription and registration, the certificate's expiry);
//! this module runs them side by side and names the ones that fail.
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// One condition of readiness.
#[async_trait::async_trait]
pub trait Check: Send + Sync + 'static {
    /// Its name in `/readyz`'s answer ("store", "cluster", "certificate").
    fn name(&self) -> &'static str;
    /// `Err(why)` while the node cannot serve because of it.
    async fn check(&self) -> Result<(), String>;
}

/// How long one check may take before it counts as failed.
pub const CHECK_BOUND: Duration = Duration::from_secs(1);

/// A node's readiness: its checks and whether it is draining.
#[derive(Default)]
pub struct Readiness {
    checks: Vec<Box<dyn Check>>,
    draining: AtomicBool,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.checks.iter().map(|c| c.name()).collect();
        f.debug_struct("Readiness")
            .field("checks", &names)
            .field("draining", &self.draining.load(Ordering::Relaxed))
            .finish()
    }
}

/// What `/readyz` answers: every check's outcome (`"ok"` or why not).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// True when every check passed and the node is not draining.
    pub ready: bool,
    /// Check name → "ok" or the reason it failed.
    pub checks: BTreeMap<&'static str, String>,
}

impl Readiness {
    /// Readiness made of `checks`.
    pub fn new(checks: Vec<Box<dyn Check>>) -> Readiness {
        Readiness {
            checks,
            draining: AtomicBool::new(false),
        }
    }

    /// The node is draining (SIGTERM): not ready from now on.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Run every check (side by side, each within [`CHECK_BOUND`]).
    pub async fn report(&self) -> Report {
        let runs = self.checks.iter().map(|c| async move {
            let outcome = match tokio::time::timeout(CHECK_BOUND, c.check()).await {
                Ok(Ok(())) => "ok".to_string(),
                Ok(Err(why)) => why,
                Err(_) => format!("no answer within {} ms", CHECK_BOUND.as_millis()),
            };
            (c.name(), outcome)
        });
        let mut checks: BTreeMap<&'static str, String> = futures::future::join_all(runs).await.into_iter().collect();
        let draining = self.draining.load(Ordering::Acquire);
        checks.insert(
            "draining",
            if draining {
                "the node is draining".into()
            } else {
                "ok".into()
            },
        );
        Report {
            ready: checks.values().all(|v| v == "ok"),
            checks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(&'static str, Result<(), String>);

    #[async_trait::async_trait]
    impl Check for Fixed {
        fn name(&self) -> &'static str {
            self.0
        }
        async fn check(&self) -> Result<(), String> {
            self.1.clone()
        }
    }

    struct Hangs;

    #[async_trait::async_trait]
    impl Check for Hangs {
        fn name(&self) -> &'static str {
            "hangs"
        }
        async fn check(&self) -> Result<(), String> {
            futures::future::pending().await
        }
    }

    #[tokio::test]
    async fn ready_only_when_every_check_passes_and_not_draining() {
        let r = Readiness::new(vec![Box::new(Fixed("store", Ok(())))]);
        assert!(r.report().await.ready);
        r.set_draining();
        let rep = r.report().await;
        assert!(!rep.ready);
        assert_eq!(rep.checks["draining"], "the node is draining");

        let r = Readiness::new(vec![
            Box::new(Fixed("store", Err("disk full".into()))),
            Box::new(Fixed("cluster", Ok(()))),
            Box::new(Hangs),
        ]);
        let rep = r.report().await;
        assert!(!rep.ready);
        assert_eq!(rep.checks["store"], "disk full");
        assert_eq!(rep.checks["cluster"], "ok");
        assert!(rep.checks["hangs"].starts_with("no answer"), "{:?}", rep.checks);
    }
}
