//! Outputs: where agents send data.

use chrono::Utc;

use flotilla_domain::output::{self, NewOutput, Output, OutputUpdate};
use flotilla_store::{Page, Paged};

use flotilla_api::management::*;

use super::*;

impl Management<'_> {
    pub async fn create_output(&self, req: CreateOutput) -> Result<Output> {
        let id = new_id(req.id.as_deref(), "id")?;
        let new = NewOutput {
            id: Some(id.clone()),
            name: output::validate_name_field(&req.name)?,
            hosts: output::validate_hosts(req.output_type, &req.hosts)?,
            output_type: req.output_type,
            is_default: req.is_default,
        };
        Ok(self.store().create_output(&id, &new, Utc::now()).await?)
    }

    pub async fn get_output(&self, id: &str) -> Result<Output> {
        Ok(self.store().get_output(id).await?)
    }

    pub async fn list_outputs(&self, page: Page) -> Result<Paged<Output>> {
        Ok(self.store().list_outputs(page).await?)
    }

    pub async fn update_output(&self, id: &str, req: UpdateOutput) -> Result<Output> {
        let current = self.store().get_output(id).await?;
        let output_type = req.output_type.unwrap_or(current.output_type);
        let hosts = match (&req.hosts, req.output_type) {
            (Some(h), _) => Some(output::validate_hosts(output_type, h)?),
            // A type change must still fit the existing hosts.
            (None, Some(t)) => Some(output::validate_hosts(t, &current.hosts)?),
            (None, None) => None,
        };
        let update = OutputUpdate {
            name: req
                .name
                .as_deref()
                .map(output::validate_name_field)
                .transpose()?,
            output_type: req.output_type,
            hosts,
            is_default: req.is_default,
        };
        Ok(self.store().update_output(id, &update, Utc::now()).await?)
    }

    pub async fn delete_output(&self, id: &str) -> Result<()> {
        Ok(self.store().delete_output(id).await?)
    }
}
