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

    /// The newest `limit` events that name the agent (`agent.id`, as
    /// agents stamp their events) across the data streams, at most
    /// [`MAX_STREAMS_SEARCHED`] of them, from `since`: one
    /// bounded search per stream, merged newest first.
    pub async fn agent_latest_events(
        &self,
        agent_id: &str,
        since: chrono::DateTime<chrono::Utc>,
        limit: u32,
    ) -> Result<Vec<StoredDocument>> {
        let names = self.store().data_stream_names().await?;
        let query = DocumentQuery {
            from: Some(since),
            to: None,
            text: None,
            matches: vec![("agent.id".to_owned(), agent_id.to_owned())],
            ascending: false,
        };
        let page = Page {
            page: 1,
            per_page: limit.clamp(1, 100),
        };
        let mut found = Vec::new();
        for name in names.iter().take(MAX_STREAMS_SEARCHED) {
            found.extend(
                self.store()
                    .search_documents(name, &query, page)
                    .await?
                    .items,
            );
        }
        found.sort_by(|a, b| b.timestamp.cmp(&a.timestamp).then_with(|| a.id.cmp(&b.id)));
        found.truncate(page.per_page as usize);
        Ok(found)
    }
}

/// The most data streams [`Management::agent_latest_events`] searches.
pub(super) const MAX_STREAMS_SEARCHED: usize = 50;
