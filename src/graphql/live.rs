//! Subscriptions: `metricUpdated`, `dashboardUpdated` and `eventStream`.
//! The work is in `domain::live` (watchers shared per tenant and query,
//! event tails); here each subscription takes its place in the socket's
//! and tenant's limits and maps domain results to GraphQL objects.

use async_graphql::{Context, ID, Result, Subscription};
use futures_util::{Stream, StreamExt};

use super::events::{Event, EventFilterInput};
use super::guard::{RoleGuard, state, tenant};
use super::metrics::{MetricQueryInput, MetricResult};
use crate::auth::Role;
use crate::domain::events::TailEvent;
use crate::domain::events::query::EventRecord;
use crate::domain::live::ConnectionSlot;

#[derive(Default)]
pub struct LiveSubscription;

#[Subscription]
impl LiveSubscription {
    /// The result of `query`: first the current one, then a new one each
    /// time acknowledged events change it (after a short debounce; never
    /// the same result twice). Subscribers of one tenant asking the same
    /// question share one computation.
    #[graphql(guard = "RoleGuard::new(Role::Viewer)")]
    async fn metric_updated(
        &self,
        ctx: &Context<'_>,
        query: MetricQueryInput,
    ) -> Result<impl Stream<Item = Result<MetricResult>> + use<>> {
        let caller = tenant(ctx)?;
        let live = &state(ctx)?.live;
        let slot = live.subscribe(caller, ctx.data_opt::<ConnectionSlot>())?;
        let updates = live.metric(caller, query.into_domain())?;
        Ok(updates.map(move |update| {
            // The subscription's place is held as long as its stream.
            let _held = &slot;
            let update = update?;
            let mut result = MetricResult::from(update.result.clone());
            result.sequence = i64::try_from(update.sequence).ok();
            Ok(result)
        }))
    }

    /// The tenant's events matching `filter`, in commit order, from now
    /// on. A subscriber that falls `PULSE_LIVE_STREAM_BUFFER` events
    /// behind gets `SLOW_CONSUMER` and is closed.
    #[graphql(guard = "RoleGuard::new(Role::Viewer)")]
    async fn event_stream(
        &self,
        ctx: &Context<'_>,
        filter: Option<EventFilterInput>,
    ) -> Result<impl Stream<Item = Result<Event>> + use<>> {
        let caller = tenant(ctx)?;
        let live = &state(ctx)?.live;
        let filter = filter.unwrap_or_default().into_domain()?;
        let slot = live.subscribe(caller, ctx.data_opt::<ConnectionSlot>())?;
        Ok(live.tail(caller, filter).map(move |event| {
            let _held = &slot;
            Ok(Event(record(event?)))
        }))
    }

    /// Fires with the dashboard when it is edited (a new version) and
    /// when any of its widgets' data changes. Visibility is checked at
    /// subscribe time and again whenever the dashboard's grants change.
    #[graphql(guard = "RoleGuard::new(Role::Viewer)")]
    async fn dashboard_updated(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> Result<impl Stream<Item = Result<super::dashboards::Dashboard>> + use<>> {
        super::dashboards::updated(ctx, id).await
    }
}

fn record(e: TailEvent) -> EventRecord {
    EventRecord {
        id: e.id,
        event_type: e.event_type,
        occurred_at: e.occurred_at,
        user_id: e.user_id,
        session_id: e.session_id,
        properties: e.properties,
        received_at: e.received_at,
        source: e.source,
        // Tails carry no sender details; `events` has them.
        ip: None,
        user_agent: None,
    }
}
