//! Who connects where and subscribes to what: a pure function of the flags, so the
//! coordinator and every worker process agree without talking.

use std::{net::SocketAddr, ops::Range};

use crate::{args::PlanArgs, proto::Protocol};

/// The shape of a run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Which protocol the servers speak.
    pub protocol: Protocol,
    /// The servers, `host:port`.
    pub servers: Vec<SocketAddr>,
    /// Subscriber connections over all workers.
    pub clients: usize,
    /// Rooms the subscribers are spread over.
    pub rooms: usize,
    /// Rooms each subscriber joins.
    pub rooms_per_client: usize,
    /// Room names are `{prefix}-{index}`.
    pub room_prefix: String,
    /// Publisher connections (not subscribed) over all workers.
    pub publishers: usize,
    /// Worker processes.
    pub workers: usize,
    /// Filler bytes in each event's data, to model bigger events.
    pub padding: usize,
    /// Connection attempts in flight per worker.
    pub connect_concurrency: usize,
}

impl Plan {
    /// The plan the flags describe.
    pub fn from_args(args: &PlanArgs) -> Result<Plan, String> {
        let plan = Plan {
            protocol: args.protocol,
            servers: args.servers.clone(),
            clients: args.clients,
            rooms: args.rooms,
            rooms_per_client: args.rooms_per_client,
            room_prefix: args.room_prefix.clone(),
            publishers: args.publishers,
            workers: args.workers,
            padding: args.padding,
            connect_concurrency: args.connect_concurrency,
        };
        if plan.servers.is_empty() {
            return Err("--servers host:port[,host:port..] is required".into());
        }
        if plan.rooms == 0 || plan.workers == 0 || plan.rooms_per_client > plan.rooms {
            return Err("need rooms >= rooms-per-client, rooms >= 1 and workers >= 1".into());
        }
        Ok(plan)
    }

    /// The name of room `index`.
    pub fn room_name(&self, index: u32) -> String {
        format!("{}-{index}", self.room_prefix)
    }

    /// The rooms subscriber `client` joins.
    pub fn client_rooms(&self, client: usize) -> Vec<u32> {
        (0..self.rooms_per_client)
            .map(|k| ((client * self.rooms_per_client + k) % self.rooms) as u32)
            .collect()
    }

    /// The server subscriber `client` connects to: each room's subscribers alternate
    /// between servers, so every room is spread over all of them.
    pub fn client_server(&self, client: usize) -> usize {
        let k = self.servers.len();
        if self.rooms % k == 0 {
            (client + client / self.rooms) % k
        } else {
            client % k
        }
    }

    /// The server publisher `publisher` connects to.
    pub fn publisher_server(&self, publisher: usize) -> usize {
        publisher % self.servers.len()
    }

    /// The subscribers worker `worker` runs.
    pub fn worker_clients(&self, worker: usize) -> Range<usize> {
        worker * self.clients / self.workers..(worker + 1) * self.clients / self.workers
    }

    /// The publishers worker `worker` runs.
    pub fn worker_publishers(&self, worker: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.publishers).filter(move |p| p % self.workers == worker)
    }

    /// Connections (subscribers and publishers) on each server.
    pub fn connections_per_server(&self) -> Vec<u64> {
        let mut counts = vec![0u64; self.servers.len()];
        for client in 0..self.clients {
            counts[self.client_server(client)] += 1;
        }
        for publisher in 0..self.publishers {
            counts[self.publisher_server(publisher)] += 1;
        }
        counts
    }

    /// Subscribers of each room.
    pub fn subscribers_per_room(&self) -> Vec<u64> {
        let mut counts = vec![0u64; self.rooms];
        for client in 0..self.clients {
            for room in self.client_rooms(client) {
                counts[room as usize] += 1;
            }
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(clients: usize, rooms: usize) -> Plan {
        let args = PlanArgs {
            servers: vec![
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.1:2".parse().unwrap(),
            ],
            protocol: Protocol::Switchboard,
            clients,
            rooms,
            rooms_per_client: 1,
            room_prefix: "bench".into(),
            publishers: 2,
            workers: 3,
            padding: 0,
            connect_concurrency: 200,
        };
        Plan::from_args(&args).unwrap()
    }

    #[test]
    fn rooms_are_spread_over_both_servers() {
        let plan = plan(1000, 100);
        let servers: Vec<usize> = (0..1000)
            .filter(|c| plan.client_rooms(*c) == vec![7])
            .map(|c| plan.client_server(c))
            .collect();
        assert_eq!(servers.len(), 10);
        assert_eq!(servers.iter().filter(|s| **s == 0).count(), 5);
        assert_eq!(plan.connections_per_server(), vec![501, 501]);
        let one_room = super::tests::plan(5, 1);
        assert_eq!(
            (0..5)
                .map(|c| one_room.client_server(c))
                .collect::<Vec<_>>(),
            [0, 1, 0, 1, 0]
        );
    }

    #[test]
    fn workers_cover_every_client_once() {
        let plan = plan(1000, 100);
        let total: usize = (0..3).map(|w| plan.worker_clients(w).len()).sum();
        assert_eq!(total, 1000);
        assert_eq!(
            (0..3)
                .map(|w| plan.worker_publishers(w).count())
                .sum::<usize>(),
            2
        );
    }
}
