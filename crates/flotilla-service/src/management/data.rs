//! The embedded output's data streams, for operators: figures and search.

use flotilla_store::{
    DataStreamStats, DocumentQuery, Entity, Page, Paged, StoreError, StoredDocument,
};

use super::*;

impl Management<'_> {
    pub async fn list_data_streams(&self) -> Result<Vec<DataStreamStats>> {
        Ok(self.store().list_data_streams().await?)
    }

    /// Documents of one data stream (404 when there is no such stream).
    pub async fn search_data_stream(
        &self,
        name: &str,
        query: &DocumentQuery,
        page: Page,
    ) -> Result<Paged<StoredDocument>> {
        if self
            .store()
            .existing_data_streams(&[name.to_owned()])
            .await?
            .is_empty()
        {
            return Err(StoreError::not_found(Entity::DataStream, name).into());
        }
        if query.matches.len() > 16 {
            return Err(ValidationError::new("match", "at most 16 field matches").into());
        }
        Ok(self.store().search_documents(name, query, page).await?)
    }
}
