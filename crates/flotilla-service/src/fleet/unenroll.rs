//! The agent's own unenrolment report (audit/unenroll).

use chrono::{DateTime, Utc};

use flotilla_store::StoreError;

use super::*;

impl Fleet<'_> {
    pub async fn audit_unenroll(
        &self,
        authed: AuthedAgent,
        body: AuditUnenrollRequest,
    ) -> Result<()> {
        let AuthedAgent { agent, .. } = authed;
        if !AUDIT_REASONS.contains(&body.reason.as_str()) {
            return Err(FleetError::bad("audit/unenroll request invalid reason"));
        }
        let time = DateTime::parse_from_rfc3339(&body.timestamp)
            .map_err(|_| FleetError::bad("timestamp must be an RFC 3339 date-time"))?
            .with_timezone(&Utc);
        match self
            .store
            .audit_unenroll(&agent.id, &body.reason, time, Utc::now())
            .await
        {
            Ok(()) => Ok(()),
            Err(StoreError::Conflict(m)) => {
                Err(FleetError::new(FleetErrorKind::AuditReasonConflict, m))
            }
            Err(e) => Err(e.into()),
        }
    }
}
