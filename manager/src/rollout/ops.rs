//! The operations behind `service update`, `service rollback` and `node update`.

use crate::{
    driver::wall_ms,
    ops::{reserved_ports, OpError},
    state::{service::ReservedPort, Kind, Scope, Service},
    Manager, NodeId,
};

use super::{rolled_back, updated, Availability, NodeAvailability, RolloutStep, UpdateConfig};

/// Why an update or rollback is refused (beyond [`OpError`]'s reasons).
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error(transparent)]
    Op(#[from] OpError),
    #[error("service {name:?} has no previous definition to roll back to")]
    NoPrevious { name: String },
    #[error(
        "the network of service {name:?} cannot change ({from} → {to}); remove and create it again"
    )]
    NetworkChange {
        name: String,
        from: String,
        to: String,
    },
    #[error("service {name:?} is global (one task per node); it has no replicas to set")]
    GlobalReplicas { name: String },
}

impl Manager {
    /// `service update`: `edit` turns the current definition into the new one, which is
    /// checked like a create's (its ports against other services and the cluster's own),
    /// then written with the rollout state (see [`super::updated`]).
    pub async fn update_service(
        &self,
        name: &str,
        edit: impl FnOnce(&Service, &UpdateConfig) -> Result<(Service, UpdateConfig), UpdateError>,
        local_reserved: &[ReservedPort],
    ) -> Result<Service, UpdateError> {
        let view = self.view();
        let current = view
            .services
            .get(name)
            .cloned()
            .ok_or_else(|| OpError::NoSuchService {
                name: name.to_owned(),
            })?;
        let (next, config) = edit(&current, &current.update.config)?;
        if next.network != current.network {
            return Err(UpdateError::NetworkChange {
                name: name.to_owned(),
                from: current.network.clone(),
                to: next.network,
            });
        }
        let service = updated(&current, next, config, wall_ms());
        service.validate().map_err(OpError::from)?;
        service
            .check_reserved(&reserved_ports(&view, local_reserved))
            .map_err(OpError::from)?;
        let mut others = view.services.clone();
        others.valid.retain(|s| s.name != name);
        if let Some(reason) = others.conflicts_with(&service) {
            return Err(OpError::ServiceClaim { reason }.into());
        }
        self.write_service(&service).await?;
        Ok(service)
    }

    /// `service rollback`: back to the previous definition, as a rollout with the current
    /// update config.
    pub async fn rollback_service(&self, name: &str) -> Result<Service, UpdateError> {
        let current =
            self.view()
                .services
                .get(name)
                .cloned()
                .ok_or_else(|| OpError::NoSuchService {
                    name: name.to_owned(),
                })?;
        let service = rolled_back(
            &current,
            "manually requested rollback".to_owned(),
            wall_ms(),
        )
        .ok_or_else(|| UpdateError::NoPrevious {
            name: name.to_owned(),
        })?;
        self.write_service(&service).await?;
        Ok(service)
    }

    /// Writes a service record as it is (a rollout step).
    pub async fn write_service(&self, service: &Service) -> Result<(), OpError> {
        self.write(
            Scope::Cluster,
            Kind::Service,
            service.name.clone(),
            Some(service.encode()),
        )
        .await?;
        Ok(())
    }

    /// Writes the rollout writer's step (its own record, so it never overwrites a user's
    /// update; see [`RolloutStep`]).
    pub async fn write_step(&self, step: &RolloutStep) -> Result<(), OpError> {
        let key = RolloutStep::key(&step.service);
        self.write(key.scope, key.kind, key.name, Some(step.encode()))
            .await?;
        Ok(())
    }

    /// `node update --availability`: any node may set any node's.
    pub async fn set_availability(
        &self,
        node: NodeId,
        availability: Availability,
    ) -> Result<(), OpError> {
        let key = NodeAvailability::key(node);
        self.write(
            key.scope,
            key.kind,
            key.name,
            Some(NodeAvailability { node, availability }.encode()),
        )
        .await?;
        Ok(())
    }
}
