//! Who is asking: an agent's access key, an enrollment credential.

use std::net::IpAddr;

use flotilla_store::{KeyKind, KeyUse};

use super::*;
use crate::keys::{KeyRejection, KeyService};
use crate::secrets::hash_token;
use crate::settings::StaticMatch;

impl Fleet<'_> {
    /// Authenticate `Authorization: ApiKey <credential>` as the access key
    /// of agent `agent_id`.
    pub async fn authenticate_agent(
        &self,
        credential: &str,
        agent_id: &str,
    ) -> Result<AuthedAgent> {
        // The key and the agent in one read; the key is judged first, as
        // if read alone.
        let (agent, key) = match KeyService::parse(credential) {
            Ok((key_id, secret)) => {
                let (agent, key) = self.store.fleet_agent_and_key(agent_id, &key_id).await?;
                (agent, KeyService::check(key, &secret))
            }
            Err(r) => (None, Err(r)),
        };
        let agent = judge(agent, key)?;
        Ok(AuthedAgent {
            agent,
            first_reads: None,
        })
    }

    /// [`Fleet::authenticate_agent`] for a check-in: the same judgement,
    /// with what the check-in reads first (its policy's revision and its
    /// pending actions) read in the same statement. Before the read the
    /// waiters' change count is taken: the check-in trusts these reads
    /// only if it is unchanged once its poll has registered.
    pub async fn authenticate_agent_for_checkin(
        &self,
        credential: &str,
        agent_id: &str,
    ) -> Result<AuthedAgent> {
        let (key_id, secret) = match KeyService::parse(credential) {
            Ok(parsed) => parsed,
            Err(r) => return Err(judge(None, Err(r)).err().unwrap_or_else(unauthorized)),
        };
        let seen = self.waiters.changes_seen(&self.store);
        let ctx = self
            .store
            .checkin_context(agent_id, &key_id, chrono::Utc::now(), PENDING_LIMIT)
            .await?;
        let agent = judge(ctx.agent, KeyService::check(ctx.key, &secret))?;
        Ok(AuthedAgent {
            agent,
            first_reads: Some(FirstReads {
                seen,
                policy_revision: ctx.policy_revision,
                actions: ctx.actions,
            }),
        })
    }
}

fn unauthorized() -> FleetError {
    FleetError::new(FleetErrorKind::Unauthorized, "unauthorized")
}

/// Whether the key read (and checked against the secret presented) is the
/// access key of the agent read: the agent, or why not.
fn judge(
    agent: Option<FleetAgent>,
    key: std::result::Result<flotilla_store::ApiKeyRecord, KeyRejection>,
) -> Result<FleetAgent> {
    {
        let key = match key {
            Ok(k) => k,
            Err(KeyRejection::Malformed) => {
                return Err(FleetError::new(
                    FleetErrorKind::MalformedToken,
                    "malformed token",
                ))
            }
            Err(KeyRejection::NotUtf8) => {
                return Err(FleetError::new(
                    FleetErrorKind::InvalidToken,
                    "token not valid utf8",
                ))
            }
            Err(KeyRejection::Unknown) => {
                return Err(FleetError::new(
                    FleetErrorKind::Unauthorized,
                    "unauthorized",
                ))
            }
            Err(KeyRejection::Invalidated | KeyRejection::Expired) => {
                return Err(FleetError::new(
                    FleetErrorKind::KeyNotEnabled,
                    "ApiKey not enabled",
                ))
            }
        };
        if key.kind != KeyKind::Access {
            return Err(FleetError::new(
                FleetErrorKind::Unauthorized,
                "unauthorized",
            ));
        }
        let agent = agent.ok_or_else(|| {
            FleetError::new(FleetErrorKind::AgentNotFound, "agent could not be found")
        })?;
        if agent.access_api_key_id.as_deref() != Some(key.id.as_str()) {
            return Err(FleetError::new(
                FleetErrorKind::AgentIdentity,
                "Agent header contains wrong identifier",
            ));
        }
        if !agent.active {
            return Err(FleetError::new(
                FleetErrorKind::AgentInactive,
                "Agent inactive",
            ));
        }
        Ok(agent)
    }
}

impl Fleet<'_> {
    /// Whether the credential is any valid key (for `/api/status`).
    pub async fn is_valid_key(&self, credential: &str) -> bool {
        matches!(self.keys().authenticate(credential).await, Ok(Ok(_)))
            || self.management().authenticate(credential).await.is_ok()
    }

    /// Which policy may this credential enrol into? Checked before the
    /// request body is read.
    pub async fn enrollment_grant(
        &self,
        credential: &str,
        peer: Option<IpAddr>,
    ) -> Result<EnrollGrant> {
        let grant = match self.settings.static_tokens.lookup(credential, peer) {
            // Static tokens live in the configuration: no expiry or use
            // limit (there is no shared row to count in), recorded by id.
            StaticMatch::Allowed(token) => EnrollGrant {
                policy_id: token.policy_id.clone(),
                key_id: Some(token.id.clone()),
                key_use: KeyUse::None,
            },
            StaticMatch::AddressRefused(token) => {
                tracing::warn!(token = %token.label, ?peer, "static enrollment token used from a refused address");
                return Err(FleetError::new(
                    FleetErrorKind::AddressRefused,
                    "enrollment is not allowed from this address",
                ));
            }
            StaticMatch::NoMatch => {
                let key = self
                    .store
                    .find_enrollment_key_by_hash(&hash_token(credential))
                    .await?
                    .filter(|k| k.active)
                    .ok_or_else(|| FleetError::new(FleetErrorKind::Unauthorized, "unauthorized"))?;
                // Checked here to refuse early; a limited key is checked
                // again, exactly, where its use is taken.
                if let Some(why) = key.refusal(self.now()) {
                    return Err(FleetError::key_refused(why, key.refusal_message(why)));
                }
                let key_use = if key.max_uses.is_some() || key.expiration.is_some() {
                    KeyUse::Limited(key.id.clone())
                } else {
                    KeyUse::Counted(key.id.clone())
                };
                EnrollGrant {
                    policy_id: key.policy_id,
                    key_id: Some(key.id),
                    key_use,
                }
            }
        };
        Ok(grant)
    }
}
