//! Drift detection by watch: one metadata watch per managed kind (label
//! selector: the ApplySet's part-of label). A change to a member's spec
//! (its generation), to a member without a generation, or a deletion wakes
//! the reconcile loop at once; status-only updates by controllers do not.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::core::{GroupVersionKind, PartialObjectMeta};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt as _;
use kube::Client;
use serde_json::Value;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use cairn_apply::ParentRef;

/// The running watches.
pub struct Watch {
    client: Client,
    notify: Arc<Notify>,
    kinds: BTreeSet<(String, String, String)>,
    selector: String,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Watch {
    /// The watch tasks end with the watch (they hold API connections).
    fn drop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

/// What distinguishes a real change from a status update.
fn fingerprint(m: &PartialObjectMeta<DynamicObject>) -> String {
    let md = &m.metadata;
    match md.generation {
        Some(g) => format!("g{g} {:?} {:?}", md.labels, md.annotations),
        None => format!("rv{}", md.resource_version.clone().unwrap_or_default()),
    }
}

fn key(m: &PartialObjectMeta<DynamicObject>) -> String {
    format!(
        "{}/{}",
        m.metadata.namespace.clone().unwrap_or_default(),
        m.metadata.name.clone().unwrap_or_default()
    )
}

impl Watch {
    pub fn new(client: Client, notify: Arc<Notify>) -> Watch {
        Watch {
            client,
            notify,
            kinds: BTreeSet::new(),
            selector: String::new(),
            tasks: Vec::new(),
        }
    }

    /// Watch the kinds of `objects` (restarting only when the set of kinds changes).
    pub async fn follow(&mut self, parent: &ParentRef, objects: &[Value]) {
        let kinds: BTreeSet<(String, String, String)> = objects
            .iter()
            .filter_map(|o| {
                let av = o.get("apiVersion")?.as_str()?;
                let kind = o.get("kind")?.as_str()?;
                let (g, v) = av.split_once('/').unwrap_or(("", av));
                Some((g.to_string(), v.to_string(), kind.to_string()))
            })
            .collect();
        let selector = parent.selector();
        if kinds == self.kinds && selector == self.selector {
            return;
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
        for (g, v, k) in &kinds {
            let gvk = GroupVersionKind::gvk(g, v, k);
            let Ok((ar, _)) = kube::discovery::pinned_kind(&self.client, &gvk).await else {
                log::warn!("drift watch: kind {g}/{v}/{k} not served; not watched");
                continue;
            };
            let api: Api<PartialObjectMeta<DynamicObject>> =
                Api::all_with(self.client.clone(), &ar);
            let cfg = watcher::Config::default().labels(&selector).page_size(100);
            let notify = self.notify.clone();
            let kind = k.clone();
            self.tasks.push(tokio::spawn(async move {
                let mut seen: BTreeMap<String, String> = BTreeMap::new();
                let mut initial = true;
                // Errors (the API server restarting, a dropped connection)
                // are retried with exponential backoff, never in a loop
                // that would spin a core and never yield.
                let mut stream = watcher::watcher(api, cfg).default_backoff().boxed();
                while let Some(ev) = stream.next().await {
                    match ev {
                        Ok(Event::Init) => {}
                        Ok(Event::InitApply(m)) => {
                            let fp = fingerprint(&m);
                            let k = key(&m);
                            // after a watch restart: changes missed while it was down count
                            if !initial && seen.get(&k) != Some(&fp) {
                                notify.notify_one();
                            }
                            seen.insert(k, fp);
                        }
                        Ok(Event::InitDone) => initial = false,
                        Ok(Event::Apply(m)) => {
                            let fp = fingerprint(&m);
                            if seen.insert(key(&m), fp.clone()).as_ref() != Some(&fp) {
                                log::debug!("drift watch: {kind} {} changed", key(&m));
                                notify.notify_one();
                            }
                        }
                        Ok(Event::Delete(m)) => {
                            seen.remove(&key(&m));
                            log::info!("drift watch: {kind} {} deleted", key(&m));
                            notify.notify_one();
                        }
                        Err(e) => log::debug!("drift watch {kind}: {e}"),
                    }
                }
            }));
        }
        self.kinds = kinds;
        self.selector = selector;
    }
}
