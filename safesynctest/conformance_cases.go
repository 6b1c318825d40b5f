package safesynctest

import (
	"context"
	"testing"
	"time"
)

var conformanceCases = []conformanceCase{
	{name: "GroupCreationTwiceIsFine", run: groupCreationTwice},
	{name: "PublishReadAckRoundTrip", run: publishReadAck},
	{name: "PublishTrimsWithMaxLen", run: publishMaxLen},
	{name: "ReadRespectsCount", run: readRespectsCount},
	{name: "OwnPendingReReadRespectsCount", run: ownPendingRespectsCount,
		differs: "XREADGROUP with an id other than > ignores COUNT and returns every pending entry"},
	{name: "BlockTiming", run: blockTiming},
	{name: "OwnPendingFirstOnRestart", run: ownPendingFirst},
	{name: "CompetingConsumersNeverShareAnEntry", run: competingConsumers},
	{name: "ReclaimRespectsIdleTime", run: reclaimRespectsIdle},
	{name: "ReclaimReachesEntriesBeyondTheFirstThousand", run: reclaimBeyondThousand},
	{name: "FullClaimBatchIsFollowedAtOnce", run: fullClaimBatchFollowed},
	{name: "ReclaimAcknowledgesDeletedEntries", run: reclaimDeleted,
		differs: "XAUTOCLAIM neither reports entries deleted from the stream nor removes them from the pending list"},
	{name: "MaxDeliveriesDeadLetters", run: maxDeliveries},
	{name: "DecodeErrorDeadLettersOnFirstDeliveryAndSparesBatchMates", run: decodeErrors},
	{name: "DecodeErrorInRunBatchSparesBatchMates", run: decodeErrorsBatch},
	{name: "PermanentErrorDeadLettersAtOnce", run: permanentError},
	{name: "DeadLetterMovesAndAcknowledges", run: deadLetterMove},
	{name: "PanicIsRecoveredCountedAndNotAcked", run: panicRecovered},
	{name: "AckFailureIsCountedAndReturned", run: ackFailure},
	{name: "StopDuringBlockingReadReturnsWithin200ms", run: stopDuringBlock},
	{name: "ShutdownAcksExactlyTheFinishedHandlers", run: shutdownAcksFinished},
	{name: "ShutdownWithConcurrency1AcksExactlyTheFinishedHandler", run: shutdownInline},
	{name: "PerKeyOrderingUnderConcurrency8", run: perKeyOrdering},
	{name: "PerKeyOrderingAcrossBatches", run: perKeyOrderingBatches},
	{name: "PerKeyOrderingUnderConcurrency4WhileReclaimClaimsWaitingEntries", run: perKeyOrderingUnderReclaim},
	{name: "AnEntryInFlightIsNeverRunTwiceWhenItsOwnConsumerReclaimsIt", run: inFlightNeverRunTwice},
	{name: "RunBatchHandlerOwnsAcknowledgement", run: runBatchOwnsAck},
	{name: "ReadLatencyExcludesBlocking", run: readLatency},
	{name: "PendingGauges", run: pendingGauges},
	{name: "GroupLostWhileRunningIsCreatedAgainByTheNextRun", run: groupLostWhileRunning},
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
