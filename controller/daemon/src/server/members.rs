//! `OperatorService.ListControllers`: the controllers of the cluster as the membership table
//! shows them (`apimctl controllers`). Any controller answers, leader or standby.

use apim_proto::v1::{ControllerMember, ListControllersRequest, ListControllersResponse};
use tonic::Request;

use super::auth::caller;
use super::error::ServerError;
use super::operator::OperatorSvc;
use crate::state::Member;

/// The wire form of one member.
fn member(m: Member) -> ControllerMember {
    ControllerMember {
        id: m.id,
        address: m.address,
        version: m.version,
        started_at_unix_ms: m.started_at_ms,
        heartbeat_unix_ms: m.heartbeat_ms,
        leader: m.leader,
        lag_ms: m.lag_ms,
        answering: m.this,
    }
}

impl OperatorSvc {
    pub(super) fn list_controllers_inner(
        &self,
        req: Request<ListControllersRequest>,
    ) -> Result<ListControllersResponse, ServerError> {
        caller(&req)?;
        let members = self.ctx().state.members()?;
        Ok(ListControllersResponse {
            members: members.into_iter().map(member).collect(),
        })
    }
}
