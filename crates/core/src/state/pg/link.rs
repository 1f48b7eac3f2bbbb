//! One connection to PostgreSQL, owned by a thread of its own.
//!
//! The store is called synchronously: from the state writer's thread, and
//! from commands that run inside a tokio runtime, where the `postgres`
//! crate's blocking client would panic (it drives its connection with a
//! runtime of its own, and one runtime cannot be blocked on inside another).
//! So the client lives on a plain thread and callers hand it jobs: a blocking
//! [`Link::call`] waits on a channel (safe anywhere), an async
//! [`Link::call_async`] awaits one. A connection that broke (the server
//! restarted) is made again before the next job; the job that met the break
//! fails, and its caller decides what that means.
//!
//! Jobs see the connection as a [`Session`], which prepares each statement
//! once per connection: a claim runs the same few statements thousands of
//! times, and a statement prepared anew costs a round trip of its own.

use std::collections::HashMap;
use std::sync::mpsc;
use std::thread::JoinHandle;

use postgres::types::{BorrowToSql, ToSql};
use postgres::{Client, CopyInWriter, Row, RowIter, Statement, Transaction};

use super::connect;
use crate::state::StateError;
use crate::state::location::PgTarget;

type Job = Box<dyn FnOnce(&mut Connection, &PgTarget) + Send>;

/// The thread's connection, and how many times it was made: a transaction
/// spans several jobs, and must fail rather than go on in a new session
/// (where its row locks and its uncommitted writes are gone).
#[derive(Default)]
struct Connection {
    client: Option<Client>,
    epoch: u64,
    /// Statements prepared on this connection, by their text.
    prepared: HashMap<String, Statement>,
}

/// The connection as a job sees it: the client, and the statements
/// already prepared on it.
pub(crate) struct Session<'c> {
    client: &'c mut Client,
    prepared: &'c mut HashMap<String, Statement>,
}

impl Session<'_> {
    fn statement(&mut self, sql: &str) -> Result<Statement, postgres::Error> {
        if let Some(statement) = self.prepared.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql)?;
        self.prepared.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    pub(crate) fn execute(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, postgres::Error> {
        let statement = self.statement(sql)?;
        self.client.execute(&statement, params)
    }

    pub(crate) fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, postgres::Error> {
        let statement = self.statement(sql)?;
        self.client.query(&statement, params)
    }

    pub(crate) fn query_one(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, postgres::Error> {
        let statement = self.statement(sql)?;
        self.client.query_one(&statement, params)
    }

    pub(crate) fn query_opt(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, postgres::Error> {
        let statement = self.statement(sql)?;
        self.client.query_opt(&statement, params)
    }

    pub(crate) fn query_raw<P, I>(
        &mut self,
        sql: &str,
        params: I,
    ) -> Result<RowIter<'_>, postgres::Error>
    where
        P: BorrowToSql,
        I: IntoIterator<Item = P>,
        I::IntoIter: ExactSizeIterator,
    {
        let statement = self.statement(sql)?;
        self.client.query_raw(&statement, params)
    }

    pub(crate) fn batch_execute(&mut self, sql: &str) -> Result<(), postgres::Error> {
        self.client.batch_execute(sql)
    }

    pub(crate) fn copy_in(&mut self, sql: &str) -> Result<CopyInWriter<'_>, postgres::Error> {
        self.client.copy_in(sql)
    }

    /// A transaction of the client's own (its statements are not kept).
    pub(crate) fn transaction(&mut self) -> Result<Transaction<'_>, postgres::Error> {
        self.client.transaction()
    }

    pub(crate) fn client(&mut self) -> &mut Client {
        self.client
    }
}

/// A connection on its own thread.
pub(crate) struct Link {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    shown: String,
}

impl Link {
    /// Connects (on the new thread) and waits until the connection is made
    /// or has failed.
    pub(crate) fn open(target: &PgTarget, role: &'static str) -> Result<Link, StateError> {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let owned = target.clone();
        let thread = std::thread::Builder::new()
            .name(format!("pg-{role}"))
            .spawn(move || {
                let mut connection = match connect(&owned) {
                    Ok(c) => {
                        let _ = ready_tx.send(Ok(()));
                        Connection {
                            client: Some(c),
                            epoch: 1,
                            prepared: HashMap::new(),
                        }
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Ok(job) = inbox.recv() {
                    job(&mut connection, &owned);
                }
            })
            .map_err(|e| StateError::Postgres {
                location: target.shown().to_owned(),
                operation: "starting its connection thread",
                reason: e.to_string(),
            })?;
        let link = Link {
            jobs: Some(jobs),
            thread: Some(thread),
            shown: target.shown().to_owned(),
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(link),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(link.gone("connecting")),
        }
    }

    fn gone(&self, operation: &'static str) -> StateError {
        StateError::Postgres {
            location: self.shown.clone(),
            operation,
            reason: "the connection's thread stopped".to_owned(),
        }
    }

    /// A job: `within` is the connection's epoch a transaction began in
    /// (`None` outside one), and `f` gets the epoch it ran in.
    fn job<T, F>(
        operation: &'static str,
        within: Option<u64>,
        f: F,
        reply: impl FnOnce(Result<T, StateError>) + Send + 'static,
    ) -> Job
    where
        T: Send + 'static,
        F: for<'s> FnOnce(&mut Session<'s>, u64) -> Result<T, postgres::Error> + Send + 'static,
    {
        Box::new(move |conn: &mut Connection, target: &PgTarget| {
            let fail = |reason: &str| StateError::Postgres {
                location: target.shown().to_owned(),
                operation,
                reason: reason.to_owned(),
            };
            let broken = conn.client.as_ref().is_none_or(Client::is_closed);
            if let Some(epoch) = within
                && (broken || epoch != conn.epoch)
            {
                return reply(Err(fail(
                    "the connection was lost in the middle of a transaction (nothing of it was committed)",
                )));
            }
            // A broken connection is made again before the next job.
            if broken {
                conn.client = None;
                // Statements belong to the connection they were prepared on.
                conn.prepared.clear();
                match connect(target) {
                    Ok(c) => {
                        conn.client = Some(c);
                        conn.epoch += 1;
                    }
                    Err(e) => return reply(Err(e)),
                }
            }
            let epoch = conn.epoch;
            let Some(client) = conn.client.as_mut() else {
                return reply(Err(fail("not connected")));
            };
            let mut session = Session {
                client,
                prepared: &mut conn.prepared,
            };
            reply(
                f(&mut session, epoch).map_err(|e| super::pg_error(target.shown(), operation, &e)),
            )
        })
    }

    /// Runs `f` on the connection and waits for its answer.
    pub(crate) fn call<T, F>(&self, operation: &'static str, f: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: for<'s> FnOnce(&mut Session<'s>) -> Result<T, postgres::Error> + Send + 'static,
    {
        self.call_in(operation, None, move |c, _| f(c))
    }

    /// [`Link::call`] as part of a transaction that began in connection
    /// epoch `within` (it fails if the connection was made again since);
    /// `f` gets the epoch it runs in, for a caller beginning a transaction.
    pub(crate) fn call_in<T, F>(
        &self,
        operation: &'static str,
        within: Option<u64>,
        f: F,
    ) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: for<'s> FnOnce(&mut Session<'s>, u64) -> Result<T, postgres::Error> + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(1);
        let job = Self::job(operation, within, f, move |answer| {
            let _ = tx.send(answer);
        });
        let sent = self.jobs.as_ref().map(|jobs| jobs.send(job).is_ok());
        if sent != Some(true) {
            return Err(self.gone(operation));
        }
        rx.recv().unwrap_or_else(|_| Err(self.gone(operation)))
    }

    /// [`Link::call`] for async callers: awaits the answer instead of
    /// blocking the runtime's thread.
    pub(crate) async fn call_async<T, F>(
        &self,
        operation: &'static str,
        f: F,
    ) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: for<'s> FnOnce(&mut Session<'s>) -> Result<T, postgres::Error> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Self::job(
            operation,
            None,
            move |c, _| f(c),
            move |answer| {
                let _ = tx.send(answer);
            },
        );
        let sent = self.jobs.as_ref().map(|jobs| jobs.send(job).is_ok());
        if sent != Some(true) {
            return Err(self.gone(operation));
        }
        rx.await.unwrap_or_else(|_| Err(self.gone(operation)))
    }
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("to", &self.shown).finish()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop after the jobs queued.
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
