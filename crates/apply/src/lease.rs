//! One writer for cluster-scoped state: a `coordination.k8s.io/v1` Lease,
//! taken and renewed with optimistic concurrency (resourceVersion), so two
//! agents can never both believe they hold it.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::Client;

/// Who holds the lease after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// We hold it (just acquired or renewed).
    Held,
    /// Another holder's lease has not expired.
    HeldBy(String),
}

/// A named lease and the identity competing for it.
#[derive(Debug, Clone)]
pub struct LeaseLock {
    pub namespace: String,
    pub name: String,
    pub holder: String,
    pub duration_seconds: i32,
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

fn expired(spec: &LeaseSpec) -> bool {
    let Some(renew) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return true;
    };
    let secs = spec.lease_duration_seconds.unwrap_or(0) as i64;
    let age = k8s_openapi::jiff::Timestamp::now().as_second() - renew.0.as_second();
    age > secs
}

impl LeaseLock {
    /// Acquire the lease if it is free or expired, renew it if we hold it.
    pub async fn try_acquire(&self, client: &Client) -> Result<LeaseState, kube::Error> {
        let api: Api<Lease> = Api::namespaced(client.clone(), &self.namespace);
        let current = api.get_opt(&self.name).await?;
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.holder.clone()),
                    lease_duration_seconds: Some(self.duration_seconds),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(LeaseState::Held),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(LeaseState::HeldBy("?".into())),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        if holder != self.holder && !holder.is_empty() && !expired(spec) {
            return Ok(LeaseState::HeldBy(holder));
        }
        if holder != self.holder {
            spec.holder_identity = Some(self.holder.clone());
            spec.acquire_time = Some(now());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(now());
        spec.lease_duration_seconds = Some(self.duration_seconds);
        // replace carries metadata.resourceVersion: a concurrent writer makes this 409
        match api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(LeaseState::Held),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(LeaseState::HeldBy(holder)),
            Err(e) => Err(e),
        }
    }

    /// Give the lease up (if we hold it) so another agent need not wait for expiry.
    pub async fn release(&self, client: &Client) -> Result<(), kube::Error> {
        let api: Api<Lease> = Api::namespaced(client.clone(), &self.namespace);
        if let Some(mut lease) = api.get_opt(&self.name).await? {
            if let Some(spec) = lease.spec.as_mut() {
                if spec.holder_identity.as_deref() == Some(&self.holder) {
                    spec.holder_identity = None;
                    spec.renew_time = None;
                    spec.acquire_time = None;
                    api.replace(&self.name, &PostParams::default(), &lease)
                        .await?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry() {
        let old = MicroTime(
            k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(60),
        );
        let mut spec = LeaseSpec {
            holder_identity: Some("a".into()),
            lease_duration_seconds: Some(30),
            renew_time: Some(old),
            ..Default::default()
        };
        assert!(expired(&spec));
        spec.lease_duration_seconds = Some(120);
        assert!(!expired(&spec));
        spec.renew_time = None;
        assert!(expired(&spec));
    }
}
